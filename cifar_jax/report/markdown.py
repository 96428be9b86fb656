"""report.md: the numbers of each run (`run_summary`) and the markdown around them.

`report_markdown` writes an overview table, the notes on validation splits
and FLOPs, the figures (or why one is missing), then a section per run with
its table, its notes and its own figures. It only names the figure files;
`cifar_jax.report.write` saves them.
"""

from __future__ import annotations

from typing import Any
from typing import Sequence

import numpy as np

from cifar_jax.report.runs import RunData
from cifar_jax.report.runs import is_validation


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
  epochs, accs = run.series(run.accuracy_key)
  times = run.series("epoch_time_s")[1]
  speeds = run.series("train_img_per_s")[1]
  compile_s = run.series("compile_s")[1]
  best = int(np.argmax(accs)) if accs else None
  return {
    "model": run.model,
    "params": run.params,
    "flops": run.flops,
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
  epochs = f"{s['epochs']} / {s['num_epochs']:g}" if s["num_epochs"] else str(s["epochs"])
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
    (
      f"Best {kind} accuracy{split}",
      _pct(s["best_eval_accuracy"]) + (f" (epoch {s['best_epoch']})" if s["best_epoch"] else ""),
    ),
    (
      f"Final {kind} accuracy{split}",
      _pct(s["final_eval_accuracy"]) + (f" (epoch {s['final_epoch']})" if s["final_epoch"] else ""),
    ),
    ("Train time (sum of epoch times)", time),
    ("Throughput (mean train img/s)", f"{s['img_per_s']:,.0f} img/s" if s["img_per_s"] else "n/a"),
  ]
  for result in run.evals:
    e_kind = "validation" if is_validation(result.get("split")) else "eval"
    extra = (", EMA weights" if result.get("ema") else "") + (
      f", TTA {result['tta']}" if result.get("tta") not in (None, "none") else ""
    )
    rows.append(
      (
        f"`--mode=eval` {e_kind} accuracy on `{result.get('split')}`",
        f"{_pct(result['accuracy'])} on {result.get('num_examples', 0):,} examples "
        f"(step {result.get('step')}{extra}, `{result['file']}`)",
      )
    )
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
  """report.md for `runs`. `figures` maps "curves", "per_class" and
  "accuracy_vs_params" to their file names (or "<key>_missing" to why there
  is none), and each run's slug to {"confusion"/"mistakes": file name}."""
  lines = ["# CIFAR-10 report", ""]
  lines += ["| Run | Model | Parameters | Accuracy | Epochs |", "|---|---|---|---|---|"]
  for run in runs:
    s = run_summary(run)
    point = run.accuracy_point
    acc = f"{_pct(point[0])} ({'--mode=eval' if point[1] else 'last logged'})" if point else "n/a"
    status = f"{s['epochs']} / {s['num_epochs']:g}" if s["num_epochs"] else str(s["epochs"])
    params = f"{s['params']:,}" if s["params"] else "n/a"
    model = f"`{s['model']}`" if s["model"] != "unknown" else "unknown"
    lines.append(f"| {run.name} | {model} | {params} | {acc} | {status} |")
  lines.append("")
  splits = sorted(
    {r.eval_split for r in runs if is_validation(r.eval_split)}
    | {e["split"] for r in runs for e in r.evals if is_validation(e.get("split"))}
  )
  if splits:
    lines += [
      f"Accuracies measured on a slice of the training split "
      f"({', '.join(f'`{s}`' for s in splits)}) are **validation** accuracies: "
      "those examples are held out from training, but they are not the CIFAR-10 "
      "test set, and model choices tuned on them make them optimistic.",
      "",
    ]
  lines += [
    "FLOPs are XLA's count for the forward pass of one 32x32 image "
    "(a multiply-add counts 2). Train time excludes compilation.",
    "",
  ]
  for key, alt in (
    ("curves", "training curves"),
    ("per_class", "per-class accuracy"),
    ("accuracy_vs_params", "accuracy against parameters"),
  ):
    if key in figures:
      lines += [f"![{alt}]({figures[key]})", ""]
    else:
      lines += [f"_No {alt} plot: {figures.get(key + '_missing', 'no data')}._", ""]
  for run in runs:
    lines += _run_section(run, figures.get(run.slug, {}))
  return "\n".join(lines)
