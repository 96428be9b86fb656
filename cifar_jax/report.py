"""Reports users look at: curves, confusion matrices, mistakes and a summary.

    python -m cifar_jax.report --workdirs runs/lenet5 runs/r18 --out reports/cmp

reads each run's workdir (config.json, metrics.jsonl and the eval_<split>.json
/ eval_<split>_mistakes.npz written by `--mode=eval`) and writes into OUT:

  curves.png              loss and accuracy per epoch, one colour per run
  confusion_<run>.png     row-normalised confusion matrix, counts in the cells
  per_class.png           per-class accuracy, bars grouped across runs
  accuracy_vs_params.png  accuracy against parameter count (log x)
  mistakes_<run>.png      misclassified images with true and predicted labels
  report.md               a table per run, embedding the pictures

A run that lacks something (no config.json, no metrics yet, no evaluation
yet) is reported as such; the plots needing it leave it out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from cifar_jax import workdir as workdir_lib  # jax-free, as is writers,
from cifar_jax import writers  # so the report starts fast

METRICS_FILE = writers.METRICS_FILE
MISTAKES_SUFFIX = "_mistakes"


# ---- loading a run ----------------------------------------------------------------
@dataclasses.dataclass
class RunData:
  """What a workdir holds; missing pieces are None / empty, with `notes` why."""
  workdir: Path
  slug: str  # filesystem-safe, unique among the runs of one report
  config: dict[str, Any] | None = None
  metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # primary first
  notes: list[str] = dataclasses.field(default_factory=list)
  stats: dict[str, Any] | None = None  # models.summary.model_stats, when available

  @property
  def model(self) -> str:
    if self.config and isinstance(self.config.get("model"), dict):
      return str(self.config["model"].get("name", "unknown"))
    return str(self.evals[0].get("model", "unknown")) if self.evals else "unknown"

  @property
  def name(self) -> str:
    """Display name: workdir basename + model."""
    return self.slug if self.model in (self.slug, "unknown") else f"{self.slug} ({self.model})"

  @property
  def eval_split(self) -> str | None:
    if self.config and isinstance(self.config.get("dataset"), dict):
      return self.config["dataset"].get("eval_split")
    return self.evals[0].get("split") if self.evals else None

  @property
  def num_epochs(self) -> int | None:
    return self.config.get("num_epochs") if self.config else None

  @property
  def primary_eval(self) -> dict[str, Any] | None:
    return self.evals[0] if self.evals else None

  def series(self, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that have a finite `key`."""
    pairs = [(r["epoch"], r[key]) for r in self.metrics
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]

  @property
  def params(self) -> int | None:
    for e in self.evals:
      if isinstance(e.get("param_count"), int):
        return e["param_count"]
    return self.stats["params"] if self.stats else None

  @property
  def flops(self) -> float | None:
    return self.stats.get("flops") if self.stats else None


def safe_name(name: str) -> str:
  """A workdir basename usable in a file name: 'my run/1' -> 'my_run_1'."""
  return writers.file_safe_name(name, "run")


def is_validation(split: str | None) -> bool:
  """A slice of the training split (e.g. train[45000:]) held out for validation."""
  return bool(split) and split.startswith("train")


def _read_json(path: Path, run: RunData, what: str) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    run.notes.append(f"unreadable {what} `{path.name}` ({type(e).__name__}: {e})")
    return None


def _read_metrics(path: Path, run: RunData) -> list[dict[str, Any]]:
  """Records of metrics.jsonl; lines that are not records (a half-written
  last line while the run goes on) are skipped and noted."""
  contents = workdir_lib.read_jsonl(path)
  run.notes.extend(f"skipped a malformed line {n} of `{METRICS_FILE}`"
                   for n in contents.bad_lines if n != contents.num_lines)
  return [r for r in contents.rows if "epoch" in r]


def _load_mistakes(path: Path) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except (OSError, ValueError, KeyError):
    return None


def load_run(workdir: str | Path, slug: str | None = None) -> RunData:
  """Reads what a workdir holds; never raises for missing or partial files."""
  workdir = Path(workdir)
  run = RunData(workdir=workdir, slug=slug or safe_name(workdir.resolve().name))
  if not workdir.is_dir():
    run.notes.append(f"workdir `{workdir}` does not exist")
    return run
  if (workdir / "config.json").exists():
    config = _read_json(workdir / "config.json", run, "config")
    run.config = config if isinstance(config, dict) else None
  else:
    run.notes.append("missing `config.json`: not a cifar_jax workdir, or the run "
                     "has not started")
  if (workdir / METRICS_FILE).exists():
    run.metrics = _read_metrics(workdir / METRICS_FILE, run)
  if not run.metrics:
    run.notes.append("no metrics yet: the run has not finished its first epoch "
                     "(still starting, or it was stopped)")
  elif run.num_epochs and run.metrics[-1]["epoch"] < run.num_epochs:
    run.notes.append(f"only {run.metrics[-1]['epoch']} of {run.num_epochs} epochs done: "
                     "the run is still going (or was stopped; the same command resumes it)")
  for path in sorted(workdir.glob("eval_*.json")):
    result = _read_json(path, run, "evaluation")
    if isinstance(result, dict) and isinstance(result.get("accuracy"), (int, float)):
      result["file"] = path.name
      result["mistakes"] = _load_mistakes(path.with_name(path.stem + MISTAKES_SUFFIX + ".npz"))
      run.evals.append(result)
  # The evaluation of the config's eval split first, then the newest.
  run.evals.sort(key=lambda e: (e.get("split") != run.eval_split,
                                -(workdir / e["file"]).stat().st_mtime))
  if not run.evals:
    run.notes.append("no evaluation yet: run `python -m cifar_jax.main --config=... "
                     f"--workdir={workdir} --mode=eval`")
  return run


def _add_model_stats(run: RunData, cache: dict) -> None:
  """FLOPs (and parameters) from cifar_jax.models.summary, if it exists."""
  if not run.config or not isinstance(run.config.get("model"), dict):
    return
  try:
    from cifar_jax.models import summary
  except Exception:  # not written yet, or broken: FLOPs are then "n/a"
    return
  options = {k: tuple(v) if isinstance(v, list) else v
             for k, v in run.config["model"].items() if k != "name"}
  num_classes = (run.config.get("dataset") or {}).get("num_classes")
  if num_classes:
    options["num_classes"] = num_classes
  key = (run.model, json.dumps(options, sort_keys=True, default=str))
  if key not in cache:
    try:
      cache[key] = summary.model_stats(run.model, **options)
    except Exception as e:  # a model this version cannot build: report, don't fail
      cache[key] = None
      run.notes.append(f"could not compute FLOPs ({type(e).__name__}: {e})")
  run.stats = cache[key]


def load_runs(workdirs: Sequence[str | Path], flops: bool = True) -> list[RunData]:
  """Loads every workdir, giving each a unique file-name slug."""
  slugs: list[str] = []
  for workdir in workdirs:
    base = safe_name(Path(workdir).resolve().name)
    slug, n = base, 2
    while slug in slugs:
      slug, n = f"{base}_{n}", n + 1
    slugs.append(slug)
  runs = [load_run(w, s) for w, s in zip(workdirs, slugs)]
  if flops:
    cache: dict = {}
    for run in runs:
      _add_model_stats(run, cache)
  return runs


# ---- figures ------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
  """A pyplot-free Agg figure (no global state, safe in tests and threads)."""
  fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def figure_to_array(fig: Figure) -> np.ndarray:
  """The rendered figure as (H, W, 3) uint8."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _short_count(x: float) -> str:
  """62000 -> '62k', 1.5e6 -> '1.5M'."""
  for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.3g}{suffix}"
  return f"{x:.3g}"


def _log_count_axis(axis) -> None:
  """Log-axis tick labels as 50k / 1M; 2x and 5x minor ticks labelled when
  the axis spans few decades."""
  def label(x, pos, minor):
    if x <= 0:
      return ""
    if minor:
      low, high = axis.get_view_interval()
      coeff = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
      if math.log10(high / low) > 2.5 or coeff not in (2, 5):
        return ""
    return _short_count(x)
  axis.set_major_formatter(FuncFormatter(lambda x, pos: label(x, pos, False)))
  axis.set_minor_formatter(FuncFormatter(lambda x, pos: label(x, pos, True)))


def _percent_axis(axis) -> None:
  axis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
  axis.set_major_formatter(FuncFormatter(lambda x, pos: f"{x:g}%"))


def _color(i: int) -> str:
  return f"C{i % 10}"


def _split_label(split: str | None) -> str:
  if not split:
    return "eval"
  return f"validation ({split})" if is_validation(split) else f"eval ({split})"


def curves_figure(runs: Sequence[RunData]) -> Figure:
  """Loss and accuracy per epoch: colour = run, solid = eval, dashed = train."""
  fig = new_figure(12, 5)
  ax_loss, ax_acc = fig.subplots(1, 2)
  for i, run in enumerate(runs):
    for key, style in (("train", "--"), ("eval", "-")):
      for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "accuracy", 100.0)):
        epochs, values = run.series(f"{key}_{metric}")
        if epochs:
          ax.plot(epochs, np.asarray(values) * scale, style, color=_color(i),
                  marker="o" if len(epochs) < 30 else None, markersize=3)
  splits = {r.eval_split for r in runs if r.metrics}
  eval_label = _split_label(splits.pop()) if len(splits) == 1 else "eval"
  for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.set_xlabel("epoch")
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax_loss.set_ylabel("cross-entropy loss")
  ax_acc.set_ylabel("accuracy")
  _percent_axis(ax_acc.yaxis)
  handles = [ax_acc.plot([], [], "-", color=_color(i), label=run.name)[0]
             for i, run in enumerate(runs) if run.metrics]
  handles += [ax_acc.plot([], [], "-", color="k", label=eval_label)[0],
              ax_acc.plot([], [], "--", color="k", label="train (augmented batches)")[0]]
  fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
             frameon=False)
  return fig


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                     title: str = "") -> Figure:
  """Row-normalised confusion matrix (colour) with the counts in the cells."""
  counts = np.asarray(confusion, dtype=np.int64)
  n = len(counts)
  fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  size = max(6.0, 0.6 * n + 2.5)
  fig = new_figure(size + 1.2, size)
  ax = fig.subplots()
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  if n <= 30:
    fontsize = 9 if n <= 12 else 6
    for t in range(n):
      for p in range(n):
        ax.text(p, t, f"{counts[t, p]}", ha="center", va="center", fontsize=fontsize,
                color="white" if fractions[t, p] > 0.55 else "black")
  names = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
  ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
  ax.set_yticks(range(n), names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  if title:
    ax.set_title(title)
  fig.colorbar(image, ax=ax, shrink=0.8,
               label="fraction of the true class (row-normalised)")
  return fig


def _eval_title(run: RunData, result: dict[str, Any]) -> str:
  split = result.get("split")
  return (f"{run.name}: {_split_label(split)}, step {result.get('step')}\n"
          f"accuracy {100 * result['accuracy']:.2f}% on "
          f"{result.get('num_examples', '?'):,} examples")


def confusion_image(result: dict[str, Any], title: str | None = None) -> np.ndarray:
  """(H, W, 3) uint8 picture of an eval result's confusion matrix (for TensorBoard)."""
  if title is None:
    title = (f"{result.get('model', '')} {_split_label(result.get('split'))}, "
             f"step {result.get('step')}: accuracy {100 * result['accuracy']:.2f}%")
  return figure_to_array(confusion_figure(result["confusion_matrix"],
                                          result["class_names"], title))


def per_class_figure(runs: Sequence[RunData]) -> Figure:
  """Per-class accuracy of each evaluated run, bars grouped by class."""
  runs = [(i, r) for i, r in enumerate(runs)
          if r.primary_eval and r.primary_eval.get("per_class_accuracy")]
  names = list(runs[0][1].primary_eval["per_class_accuracy"])
  fig = new_figure(min(16.0, max(10.0, 0.3 * len(names) * len(runs) + 2)), 5)
  ax = fig.subplots()
  width = 0.8 / len(runs)
  x = np.arange(len(names))
  for j, (i, run) in enumerate(runs):
    result = run.primary_eval
    values = [100 * result["per_class_accuracy"].get(c, np.nan) for c in names]
    ax.bar(x - 0.4 + width * (j + 0.5), values, width, color=_color(i),
           label=f"{run.name}: {100 * result['accuracy']:.1f}% overall")
  ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0,
                ha="right" if len(names) > 6 else "center", rotation_mode="anchor")
  ax.set_ylim(0, 100)
  _percent_axis(ax.yaxis)
  ax.set_ylabel("accuracy on the class")
  splits = {r.primary_eval.get("split") for _, r in runs}
  ax.set_title("per-class accuracy" + (f", {_split_label(splits.pop())}"
                                       if len(splits) == 1 else ""))
  ax.grid(axis="y", alpha=0.3)
  fig.legend(loc="outside lower center", ncols=min(len(runs), 3), frameon=False)
  return fig


def _accuracy_point(run: RunData) -> tuple[float, bool] | None:
  """(accuracy, from an eval file?): the eval file's, else the last logged one."""
  if run.primary_eval:
    return run.primary_eval["accuracy"], True
  _, values = run.series("eval_accuracy")
  return (values[-1], False) if values else None


def accuracy_vs_params_figure(runs: Sequence[RunData]) -> Figure:
  """Accuracy against parameter count (log x), each point labelled with its model."""
  points = [(i, run, *_accuracy_point(run)) for i, run in enumerate(runs)
            if run.params and _accuracy_point(run)]
  fig = new_figure(8, 5.5)
  ax = fig.subplots()
  models = [run.model for _, run, _, _ in points]
  for k, (i, run, acc, from_file) in enumerate(points):
    ax.scatter(run.params, 100 * acc, s=60, zorder=3, edgecolors=_color(i),
               facecolors=_color(i) if from_file else "none")
    label = run.model if models.count(run.model) == 1 else run.name
    ax.annotate(label, (run.params, 100 * acc), xytext=(7, 7 if k % 2 == 0 else -12),
                textcoords="offset points", fontsize=9)
  ax.set_xscale("log")
  params = np.array([run.params for _, run, _, _ in points], dtype=float)
  accs = np.array([100 * acc for _, _, acc, _ in points])
  ax.set_xlim(params.min() / 3, params.max() * 4)  # room for the labels
  ax.set_ylim(max(0.0, accs.min() - 10), min(100.0, accs.max() + 10))
  _percent_axis(ax.yaxis)
  _log_count_axis(ax.xaxis)
  ax.set_xlabel("trainable parameters (log scale)")
  ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)
  ax.grid(alpha=0.1, which="minor")
  ax.set_title("accuracy against model size")
  if not all(from_file for *_, from_file in points):
    ax.scatter([], [], edgecolors="k", facecolors="k", label="--mode=eval result")
    ax.scatter([], [], edgecolors="k", facecolors="none", label="last logged eval accuracy")
    ax.legend(loc="lower right", fontsize=9)
  return fig


def mistakes_figure(mistakes: dict[str, np.ndarray], title: str = "",
                    columns: int = 8) -> Figure:
  """A grid of misclassified images with their true and predicted labels."""
  images, labels, predictions = mistakes["images"], mistakes["labels"], mistakes["predictions"]
  names = [str(c) for c in mistakes.get("class_names", [])]
  name = lambda c: names[int(c)] if int(c) < len(names) else str(int(c))
  n = len(images)
  columns = min(columns, n)
  rows = -(-n // columns)
  fig = new_figure(1.55 * columns, 1.85 * rows + 0.6)
  axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).reshape(-1)
  for k, ax in enumerate(axes):
    ax.set_xticks([])
    ax.set_yticks([])
    if k >= n:
      ax.set_axis_off()
      continue
    ax.imshow(images[k], interpolation="nearest")
    ax.set_title(f"true: {name(labels[k])}", fontsize=8, pad=2)
    ax.set_xlabel(f"pred: {name(predictions[k])}", fontsize=8, color="C3", labelpad=2)
  if title:
    fig.suptitle(title)
  return fig


def _save(fig: Figure, path: Path, written: list[Path]) -> None:
  fig.savefig(path, dpi=100)
  written.append(path)


# ---- report.md ------------------------------------------------------------------------
def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.2f}%"


def format_flops(flops: float | None) -> str:
  if not flops:
    return "n/a"
  for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
    if flops >= scale:
      return f"{flops / scale:.2f} {unit}"
  return f"{flops:.0f} FLOPs"


def run_summary(run: RunData) -> dict[str, Any]:
  """The numbers of a run's table (None: not available)."""
  epochs, accs = run.series("eval_accuracy")
  times = run.series("epoch_time_s")[1]
  speeds = run.series("train_img_per_s")[1]
  compile_s = run.series("compile_s")[1]
  best = int(np.argmax(accs)) if accs else None
  return {
      "model": run.model, "params": run.params, "flops": run.flops,
      "epochs": run.metrics[-1]["epoch"] if run.metrics else 0,
      "num_epochs": run.num_epochs,
      "best_eval_accuracy": accs[best] if accs else None,
      "best_epoch": epochs[best] if accs else None,
      "final_eval_accuracy": accs[-1] if accs else None,
      "final_epoch": epochs[-1] if accs else None,
      "train_time_s": sum(times) if times else None,
      "compile_s": sum(compile_s) if compile_s else None,
      "img_per_s": float(np.mean(speeds)) if speeds else None,
  }


def _run_section(run: RunData, figures: dict[str, str]) -> list[str]:
  s = run_summary(run)
  kind = "validation" if is_validation(run.eval_split) else "eval"
  split = f" on `{run.eval_split}`" if run.eval_split else ""
  epochs = f"{s['epochs']} / {s['num_epochs']}" if s["num_epochs"] else str(s["epochs"])
  time = "n/a"
  if s["train_time_s"] is not None:
    time = f"{s['train_time_s']:.1f} s ({s['train_time_s'] / 60:.1f} min)"
    if s["compile_s"]:
      time += f", plus {s['compile_s']:.1f} s compiling"
  rows = [
      ("Model", f"`{s['model']}`" if s["model"] != "unknown" else "unknown"),
      ("Parameters", f"{s['params']:,}" if s["params"] else "n/a"),
      ("FLOPs (forward, 1 image)", format_flops(s["flops"])),
      ("Epochs", epochs),
      (f"Best {kind} accuracy{split}", _pct(s["best_eval_accuracy"]) +
       (f" (epoch {s['best_epoch']})" if s["best_epoch"] else "")),
      (f"Final {kind} accuracy{split}", _pct(s["final_eval_accuracy"]) +
       (f" (epoch {s['final_epoch']})" if s["final_epoch"] else "")),
      ("Train time (sum of epoch times)", time),
      ("Throughput (mean train img/s)",
       f"{s['img_per_s']:,.0f} img/s" if s["img_per_s"] else "n/a"),
  ]
  for result in run.evals:
    e_kind = "validation" if is_validation(result.get("split")) else "eval"
    extra = (", EMA weights" if result.get("ema") else "") + (
        f", TTA {result['tta']}" if result.get("tta") not in (None, "none") else "")
    rows.append((f"`--mode=eval` {e_kind} accuracy on `{result.get('split')}`",
                 f"{_pct(result['accuracy'])} on {result.get('num_examples', 0):,} examples "
                 f"(step {result.get('step')}{extra}, `{result['file']}`)"))
  lines = [f"## {run.name}", "", f"Workdir: `{run.workdir}`", ""]
  lines += [f"- **{note}**" for note in run.notes]
  if run.notes:
    lines.append("")
  lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
  for key, alt in (("confusion", "confusion matrix"), ("mistakes", "misclassified examples")):
    if key in figures:
      lines += [f"![{alt} of {run.name}]({figures[key]})", ""]
  return lines


def report_markdown(runs: Sequence[RunData], figures: dict[str, Any]) -> str:
  lines = ["# CIFAR-10 report", ""]
  lines += ["| Run | Model | Parameters | Accuracy | Epochs |", "|---|---|---|---|---|"]
  for run in runs:
    s = run_summary(run)
    point = _accuracy_point(run)
    acc = (f"{_pct(point[0])} ({'--mode=eval' if point[1] else 'last logged'})"
           if point else "n/a")
    status = f"{s['epochs']} / {s['num_epochs']}" if s["num_epochs"] else str(s["epochs"])
    params = f"{s['params']:,}" if s["params"] else "n/a"
    model = f"`{s['model']}`" if s["model"] != "unknown" else "unknown"
    lines.append(f"| {run.name} | {model} | {params} | {acc} | {status} |")
  lines.append("")
  splits = sorted({r.eval_split for r in runs if is_validation(r.eval_split)} |
                  {e["split"] for r in runs for e in r.evals if is_validation(e.get("split"))})
  if splits:
    lines += [f"Accuracies measured on a slice of the training split "
              f"({', '.join(f'`{s}`' for s in splits)}) are **validation** accuracies: "
              "those examples are held out from training, but they are not the CIFAR-10 "
              "test set, and model choices tuned on them make them optimistic.", ""]
  lines += ["FLOPs are XLA's count for the forward pass of one 32x32 image "
            "(a multiply-add counts 2). Train time excludes compilation.", ""]
  for key, alt in (("curves", "training curves"), ("per_class", "per-class accuracy"),
                   ("accuracy_vs_params", "accuracy against parameters")):
    if key in figures:
      lines += [f"![{alt}]({figures[key]})", ""]
    else:
      lines += [f"_No {alt} plot: {figures.get(key + '_missing', 'no data')}._", ""]
  for run in runs:
    lines += _run_section(run, figures.get(run.slug, {}))
  return "\n".join(lines)


def write_report(workdirs: Sequence[str | Path], out: str | Path,
                 flops: bool = True) -> list[Path]:
  """Writes the pictures and report.md for `workdirs` into `out`; returns their paths."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  runs = load_runs(workdirs, flops=flops)
  written: list[Path] = []
  figures: dict[str, Any] = {run.slug: {} for run in runs}
  if any(run.metrics for run in runs):
    _save(curves_figure(runs), out / "curves.png", written)
    figures["curves"] = "curves.png"
  else:
    figures["curves_missing"] = "no run has metrics yet"
  if any(r.primary_eval and r.primary_eval.get("per_class_accuracy") for r in runs):
    _save(per_class_figure(runs), out / "per_class.png", written)
    figures["per_class"] = "per_class.png"
  else:
    figures["per_class_missing"] = "no run has been evaluated with --mode=eval yet"
  if any(run.params and _accuracy_point(run) for run in runs):
    _save(accuracy_vs_params_figure(runs), out / "accuracy_vs_params.png", written)
    figures["accuracy_vs_params"] = "accuracy_vs_params.png"
  else:
    figures["accuracy_vs_params_missing"] = "no run has both an accuracy and a parameter count"
  for run in runs:
    result = run.primary_eval
    if result and result.get("confusion_matrix"):
      name = f"confusion_{run.slug}.png"
      _save(confusion_figure(result["confusion_matrix"], result.get("class_names", []),
                             _eval_title(run, result)), out / name, written)
      figures[run.slug]["confusion"] = name
    mistakes = result.get("mistakes") if result else None
    if mistakes is not None and len(mistakes.get("images", [])):
      wrong = round(result.get("num_examples", 0) * (1 - result["accuracy"]))
      shown = len(mistakes["images"])
      which = f"all {shown}" if shown >= wrong else f"the first {shown} of {wrong:,}"
      title = (f"{run.name}: {which} misclassified examples, "
               f"{_split_label(result.get('split'))}")
      name = f"mistakes_{run.slug}.png"
      _save(mistakes_figure(mistakes, title), out / name, written)
      figures[run.slug]["mistakes"] = name
  (out / "report.md").write_text(report_markdown(runs, figures) + "\n")
  written.append(out / "report.md")
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cifar_jax.report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdirs", nargs="+", required=True, help="Run directories.")
  parser.add_argument("--out", required=True, help="Directory for the report.")
  parser.add_argument("--no-flops", dest="flops", action="store_false",
                      help="Skip the FLOP count (it compiles each model once).")
  args = parser.parse_args(argv)
  # The FLOP count compiles each model: on the CPU, so that a report never
  # grabs the memory of a GPU that is training.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  written = write_report(args.workdirs, args.out, flops=args.flops)
  print(f"Wrote {len(written)} files; open {Path(args.out) / 'report.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
