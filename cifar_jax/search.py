"""Architecture search: random ResNet designs under a parameter budget.

    python -m cifar_jax.search --config=configs/search_resnet_budget.py --workdir=runs/search
    python -m cifar_jax.main --config=runs/search/best_config.py --workdir=runs/best

Candidates of the `resnet_budget` model (stages, blocks, channels, kernel,
skip-kernel and pool sizes) are drawn from `config.search`'s choices, candidate
i from a numpy Generator seeded with (search.seed, i), so the sequence is the
same on every run. Each candidate's parameter count comes from `jax.eval_shape`
of the model's init; one over `search.param_budget` is rejected without
training. Accepted candidates become trials `t<i>` (i: candidate index), each
trained for `search.trial_epochs` into DIR/trials/<id>/ by
`train.train_and_evaluate` on dataset.train_split and scored on
dataset.eval_split (train[:45000] / train[45000:] by default, never the test
set), both loaded once. With `search.scheduler="asha"` weak trials stop early.

DIR gets:
  trials.jsonl       one line per finished trial, appended as it finishes
  rejected.jsonl     the candidates over the budget (never trained)
  search_state.json  counts: sampled, accepted, rejected, duplicates, best trial
  trials/<id>/       each trial's run (metrics.jsonl, checkpoints, ...)
  best_config.py     the best design with the full-training recipe, for main.py
  search.png         accuracy against parameters, total blocks and channels
  ray_results/       Ray Tune's own files (backend "ray")

A search killed and started again with the same command skips the trials in
trials.jsonl and resumes an interrupted one from its checkpoint; raising
`search.num_trials` adds new trials only. A trial in trials.jsonl is final.

Backends: "local" trains the trials one after the other in this process.
"ray" runs them as Ray Tune trials (`search.ray_address` to join a cluster;
DIR should then be on storage that every node sees, since trials write their
runs there). ASHA is Ray's ASHAScheduler there, and locally synchronous
successive halving: every trial trains to `grace_period` epochs, the best
1/`reduction_factor` of them continue to grace * reduction_factor epochs, and
so on up to `trial_epochs`. A stopped trial keeps its learning-rate schedule
(that of `trial_epochs`), so its accuracy is that of a partly trained run.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from cifar_jax import host_memory

if __name__ == "__main__":  # first: it may re-execute the process
  host_memory.use_huge_pages()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data here.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from cifar_jax import cli  # noqa: E402
from cifar_jax import input_pipeline  # noqa: E402
from cifar_jax import workdir as workdir_lib  # noqa: E402

MODEL_NAME = "resnet_budget"
# The `resnet_budget` fields a design sets (one entry per stage, but the pool).
DESIGN_FIELDS = ("stage_sizes", "widths", "kernel_sizes", "skip_kernel_sizes", "pool_size")

TRIALS_FILE = "trials.jsonl"
REJECTED_FILE = "rejected.jsonl"
STATE_FILE = "search_state.json"
BEST_CONFIG_FILE = "best_config.py"
PLOT_FILE = "search.png"


class SearchError(ValueError):
  """A search setting or state that cannot be used; the message says the fix."""


class SearchInterrupted(RuntimeError):
  """A trial was stopped with Ctrl-C; its checkpoint is saved."""


class _StopAtEpoch(Exception):
  """Raised from the epoch callback to end a trial at a rung of the halving."""


# ---- the config ------------------------------------------------------------------
def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the key to fix."""
  if "search" not in config:
    raise SearchError("the config has no `search` section; use "
                      "configs/search_resnet_budget.py or a copy of it.")
  if config.model.name != MODEL_NAME:
    raise SearchError(f"the search samples {MODEL_NAME!r} designs; config.model.name is "
                      f"{config.model.name!r}.")
  s = config.search
  for key in ("num_trials", "param_budget", "trial_epochs", "max_candidates"):
    if s[key] < 1:
      raise SearchError(f"search.{key} must be at least 1, not {s[key]}.")
  if s.backend not in ("local", "ray"):
    raise SearchError(f"search.backend must be 'local' or 'ray', not {s.backend!r}.")
  if s.scheduler not in ("none", "asha"):
    raise SearchError(f"search.scheduler must be 'none' or 'asha', not {s.scheduler!r}.")
  if s.scheduler == "asha":
    if not 1 <= s.grace_period <= s.trial_epochs:
      raise SearchError(f"search.grace_period must be in [1, search.trial_epochs="
                        f"{s.trial_epochs}], not {s.grace_period}.")
    if s.reduction_factor < 2:
      raise SearchError(f"search.reduction_factor must be at least 2, not "
                        f"{s.reduction_factor}.")
  if s.ray_cpus_per_trial <= 0 or s.ray_gpus_per_trial < 0 or s.max_concurrent < 0:
    raise SearchError("search.ray_cpus_per_trial must be positive, ray_gpus_per_trial "
                      "and max_concurrent (0: no limit) not negative.")
  for key in ("num_stages", "blocks", "channels", "kernel_sizes", "skip_kernel_sizes",
              "pool_sizes"):
    choices = s[key]
    if (not isinstance(choices, (tuple, list)) or not choices
        or not all(isinstance(c, int) and c >= 1 for c in choices)):
      raise SearchError(f"search.{key} must be a non-empty tuple of positive integers "
                        f"(the choices), not {choices!r}.")
  size = input_pipeline.IMAGE_SHAPE[0]
  if max(s.num_stages) > int(math.log2(size)) + 1:
    raise SearchError(f"search.num_stages: at most {int(math.log2(size)) + 1} stages fit a "
                      f"{size}x{size} image, not {max(s.num_stages)}.")


def trial_config(config: ml_collections.ConfigDict, design: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """The training config of one trial: `design`'s model, the short budget,
  an evaluation and a checkpoint every epoch (the halving and resuming need
  both), one checkpoint kept. The `search` section is dropped."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    del cfg["search"]
    for key in DESIGN_FIELDS:
      value = design[key]
      cfg.model[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    cfg.num_epochs = config.search.trial_epochs
    cfg.eval_every_epochs = 1
    cfg.checkpoint.every_epochs = 1
    cfg.checkpoint.max_to_keep = 1
    cfg.checkpoint.keep_best = False
  return cfg


# ---- sampling --------------------------------------------------------------------
def sample_design(search: ml_collections.ConfigDict, index: int) -> dict[str, Any]:
  """Candidate `index`: a pure function of (search.seed, index) and the choices.

  The pool size is drawn among the choices that tile the last stage's map
  (32 / 2**(stages-1) pixels); when none does, the whole map is pooled."""
  rng = np.random.default_rng([search.seed, index])
  n = int(rng.choice(search.num_stages))
  widths = [int(c) for c in rng.choice(search.channels, n)]
  if search.nondecreasing_channels:
    widths.sort()
  final = input_pipeline.IMAGE_SHAPE[0] // 2 ** (n - 1)
  pools = [p for p in search.pool_sizes if p <= final and final % p == 0]
  return {
      "stage_sizes": [int(b) for b in rng.choice(search.blocks, n)],
      "widths": widths,
      "kernel_sizes": [int(k) for k in rng.choice(search.kernel_sizes, n)],
      "skip_kernel_sizes": [int(k) for k in rng.choice(search.skip_kernel_sizes, n)],
      "pool_size": int(rng.choice(pools)) if pools else final,
  }


def trial_id(index: int) -> str:
  return f"t{index:04d}"


def _build_model(cfg: ml_collections.ConfigDict):
  from cifar_jax import train
  return train.create_model(cfg)


def count_params(cfg: ml_collections.ConfigDict) -> int:
  """Trainable parameters of `cfg`'s model, from `jax.eval_shape` of its init
  (no weights are allocated)."""
  from cifar_jax.models import summary
  return summary.count_params(summary.abstract_variables(_build_model(cfg)))


def count_flops(cfg: ml_collections.ConfigDict) -> float | None:
  """XLA's forward FLOPs for one image (see models/summary.py), or None."""
  try:
    from cifar_jax.models import summary
    return summary.forward_flops(_build_model(cfg))
  except Exception as e:  # noqa: BLE001 - FLOPs are informative only.
    logging.warning("No FLOP count: %s", e)
    return None


def sample_candidates(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Draws candidates 0, 1, ... until `search.num_trials` fit the budget (or
  `search.max_candidates` were drawn). Repeated designs are skipped.

  Returns {"accepted": [trial spec], "rejected": [over budget], "invalid": n,
  "duplicates": n, "sampled": n}; a trial spec is {"trial_id", "index",
  "design", "params"}. Nothing is trained.
  """
  s = config.search
  accepted, rejected, seen = [], [], set()
  invalid = duplicates = index = 0
  while len(accepted) < s.num_trials and index < s.max_candidates:
    design = sample_design(s, index)
    key = json.dumps(design, sort_keys=True)
    if key in seen:
      duplicates += 1
    else:
      seen.add(key)
      try:
        params = count_params(trial_config(config, design))
      except ValueError as e:  # a design the model refuses
        logging.warning("Candidate %d is invalid: %s", index, e)
        invalid += 1
      else:
        entry = {"index": index, "design": design, "params": params}
        if params > s.param_budget:
          rejected.append(entry)
        else:
          accepted.append({"trial_id": trial_id(index), **entry})
    index += 1
  return {"accepted": accepted, "rejected": rejected, "invalid": invalid,
          "duplicates": duplicates, "sampled": index}


# ---- one trial --------------------------------------------------------------------
def _steps_per_epoch(cfg, train_split) -> int:
  from cifar_jax import optim
  return optim.steps_per_epoch(len(train_split), cfg.batch_size)


def epochs_done(cfg: ml_collections.ConfigDict, trial_dir: Path, train_split) -> int:
  """Whole epochs in the trial's latest finalized checkpoint (where a resume
  starts; the train loop keeps them in trial_dir/checkpoints)."""
  if not (trial_dir / "checkpoints").is_dir():
    return 0
  import orbax.checkpoint as ocp
  steps = ocp.utils.checkpoint_steps(trial_dir / "checkpoints")
  return max(steps, default=0) // _steps_per_epoch(cfg, train_split)


def trial_progress(trial_dir: Path) -> dict[str, Any]:
  """Epochs, final and best eval accuracy and training time from metrics.jsonl."""
  from cifar_jax import writers
  records = writers.read_metrics(trial_dir)
  accuracies = [r["eval_accuracy"] for r in records if r.get("eval_accuracy") is not None]
  return {
      "epochs": records[-1]["epoch"] if records else 0,
      "final_eval_accuracy": records[-1].get("eval_accuracy") if records else None,
      "best_eval_accuracy": max(accuracies) if accuracies else None,
      "time_s": round(sum(r.get("epoch_time_s", 0.0) + r.get("compile_s", 0.0)
                          for r in records), 2),
  }


def train_trial(config: ml_collections.ConfigDict, spec: dict[str, Any], workdir: Path,
                train_split, eval_split, *, until_epoch: int | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
  """Trains (or resumes) trial `spec` into workdir/trials/<id>, up to
  `until_epoch` epochs (default: all of search.trial_epochs). Returns its dir."""
  from cifar_jax import train
  cfg = trial_config(config, spec["design"])
  trial_dir = Path(workdir) / "trials" / spec["trial_id"]
  target = config.search.trial_epochs if until_epoch is None else until_epoch

  def callback(record):
    if on_epoch is not None:
      on_epoch(record)
    if record["epoch"] >= target and target < cfg.num_epochs:
      raise _StopAtEpoch()

  if epochs_done(cfg, trial_dir, train_split) >= target:
    return trial_dir
  try:
    train.train_and_evaluate(cfg, trial_dir, train_split=train_split,
                             eval_split=eval_split, epoch_callback=callback)
  except _StopAtEpoch:
    pass
  if epochs_done(cfg, trial_dir, train_split) < target:  # Ctrl-C inside the loop
    raise SearchInterrupted(f"trial {spec['trial_id']} was interrupted (its checkpoint "
                            "is saved); run the same command again to continue.")
  return trial_dir


def make_row(config: ml_collections.ConfigDict, spec: dict[str, Any],
             progress: dict[str, Any], *, flops: float | None, status: str | None = None
             ) -> dict[str, Any]:
  """The trials.jsonl line of a finished trial."""
  model = dict(spec["design"])  # the searched fields first, then the fixed ones
  model.update({k: (list(v) if isinstance(v, tuple) else v)
                for k, v in config.model.to_dict().items()
                if k != "name" and k not in model})
  if status is None:
    status = ("completed" if progress["epochs"] >= config.search.trial_epochs
              else "stopped")
  return {"trial_id": spec["trial_id"], "index": spec["index"], "status": status,
          "design": model, "params": spec["params"], "flops": flops,
          "epochs": progress["epochs"],
          "final_eval_accuracy": progress["final_eval_accuracy"],
          "best_eval_accuracy": progress["best_eval_accuracy"],
          "time_s": progress["time_s"]}


# ---- files --------------------------------------------------------------------------
def read_trials(workdir: str | Path) -> list[dict[str, Any]]:
  """The rows of trials.jsonl; a line cut short by a kill is ignored."""
  return workdir_lib.read_jsonl(Path(workdir) / TRIALS_FILE).rows


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
  with open(path, "a") as f:
    workdir_lib.append_line(f, json.dumps(row))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ranking_key(row: dict[str, Any]):
  """Longest-trained first, then final accuracy, then fewer parameters."""
  return (row["epochs"], row["final_eval_accuracy"], -row["params"])


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
  scored = [r for r in rows if r.get("final_eval_accuracy") is not None
            and r.get("status") != "diverged"]
  return max(scored, key=_ranking_key) if scored else None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _literal(value: Any) -> str:
  if isinstance(value, list):
    value = tuple(value)
  return repr(value)


def best_config_source(config: ml_collections.ConfigDict, row: dict[str, Any],
                       workdir: str | Path) -> str:
  """A config file of the best design for `python -m cifar_jax.main`: base
  config, the search config's training recipe (its differences from base) and
  the design's model fields."""
  recipe = _flatten(config.to_dict())
  recipe = {k: v for k, v in recipe.items()
            if not k.startswith("search.") and not k.startswith("model.")}
  try:
    from configs import base
    base_flat = _flatten(base.get_config().to_dict())
    recipe = {k: v for k, v in recipe.items()
              if k not in base_flat or _literal(base_flat[k]) != _literal(v)}
  except ImportError:  # run outside the repo root: write the whole recipe
    pass
  flops = f", {row['flops'] / 1e9:.3g} GFLOPs" if row.get("flops") else ""
  lines = [
      f'"""Best {MODEL_NAME} design of the architecture search in {Path(workdir).absolute()}.',
      "",
      f"Trial {row['trial_id']}: {row['params']:,} parameters{flops}; eval accuracy "
      f"{row['final_eval_accuracy']:.4f}",
      f"(best epoch {row['best_eval_accuracy']:.4f}) on {config.dataset.eval_split} after "
      f"{row['epochs']} epochs of the search's short budget.",
      "Train it fully from the repo root:",
      "    python -m cifar_jax.main --config=<this file> --workdir=runs/best",
      '"""',
      "from configs import base",
      "",
      "",
      "def get_config():",
      "  config = base.get_config()",
      f"  config.model.name = {MODEL_NAME!r}",
  ]
  lines += [f"  config.model.{k} = {_literal(v)}" for k, v in row["design"].items()]
  lines += [f"  config.{k} = {_literal(v)}" for k, v in sorted(recipe.items())]
  lines += ["  return config", ""]
  return "\n".join(lines)


def plot_search(rows: list[dict[str, Any]], path: str | Path, budget: int | None = None
                ) -> None:
  """Eval accuracy against parameters, total blocks and total channels."""
  from matplotlib import ticker
  from matplotlib.figure import Figure  # no pyplot: no GUI backend involved

  rows = [r for r in rows if r.get("final_eval_accuracy") is not None]
  fig = Figure(figsize=(15, 4.5), layout="constrained")
  axes = fig.subplots(1, 3, sharey=True)
  panels = [("params", "parameters", lambda r: r["params"]),
            ("blocks", "total residual blocks", lambda r: sum(r["design"]["stage_sizes"])),
            ("channels", "total channels (sum over stages)",
             lambda r: sum(r["design"]["widths"]))]
  best = best_trial(rows)
  max_epochs = max((r["epochs"] for r in rows), default=0)
  for ax, (_, label, x_of) in zip(axes, panels):
    full = [r for r in rows if r["epochs"] >= max_epochs]
    stopped = [r for r in rows if r["epochs"] < max_epochs]
    points = ax.scatter([x_of(r) for r in full], [r["final_eval_accuracy"] for r in full],
                        c=[len(r["design"]["stage_sizes"]) for r in full],
                        cmap="viridis", vmin=1, vmax=6, label=f"{max_epochs} epochs")
    if stopped:
      ax.scatter([x_of(r) for r in stopped], [r["final_eval_accuracy"] for r in stopped],
                 facecolors="none", edgecolors="tab:gray",
                 label="stopped early (accuracy when stopped)")
    if best is not None:
      ax.scatter([x_of(best)], [best["final_eval_accuracy"]], marker="*", s=250,
                 color="tab:red", zorder=3, label=f"best ({best['trial_id']})")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  if budget is not None and rows:
    axes[0].axvline(budget, color="tab:red", linestyle="--", linewidth=1, label="budget")
  if rows and max(r["params"] for r in rows) > 10 * min(r["params"] for r in rows):
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].xaxis.set_minor_formatter(ticker.NullFormatter())
  axes[0].xaxis.set_major_formatter(ticker.EngFormatter())
  axes[0].set_ylabel("eval accuracy")
  fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4,
             fontsize=9)
  if rows:
    fig.colorbar(points, ax=axes, label="stages", shrink=0.8)
  fig.suptitle(f"Random search of {MODEL_NAME} designs: {len(rows)} trials")
  fig.savefig(path, dpi=100)


# ---- backends ------------------------------------------------------------------------
def _describe(spec: dict[str, Any]) -> str:
  d = spec["design"]
  return (f"{spec['trial_id']}: {spec['params']:,} params, blocks {tuple(d['stage_sizes'])}"
          f" widths {tuple(d['widths'])} kernels {tuple(d['kernel_sizes'])} skip "
          f"{tuple(d['skip_kernel_sizes'])} pool {d['pool_size']}")


def _log_row(row: dict[str, Any]) -> None:
  acc = row["final_eval_accuracy"]
  print(f"[search] {row['trial_id']} {row['status']} after {row['epochs']} epochs: "
        f"eval accuracy {'-' if acc is None else f'{acc:.4f}'} ({row['time_s']:.0f}s)",
        file=sys.stderr)


def _run_local(config, workdir: Path, cohort: list[dict], done: dict[str, dict],
               train_split, eval_split, record: Callable[[dict, dict, str | None], None]
               ) -> None:
  """Trains the cohort's unfinished trials in this process."""
  from cifar_jax import metrics as metrics_lib
  s = config.search
  if s.scheduler == "none":
    rungs = [s.trial_epochs]
  else:
    rungs, epochs = [], s.grace_period
    while epochs < s.trial_epochs:
      rungs.append(epochs)
      epochs *= s.reduction_factor
    rungs.append(s.trial_epochs)

  alive = list(cohort)
  for rung in rungs:
    reached = []
    for spec in alive:
      row = done.get(spec["trial_id"])
      if row is not None:  # final already; still ranks if it got this far
        if row["epochs"] >= rung and row["status"] != "diverged":
          reached.append(spec)
        continue
      print(f"[search] training {_describe(spec)} to epoch {rung}", file=sys.stderr)
      try:
        train_trial(config, spec, workdir, train_split, eval_split, until_epoch=rung)
      except metrics_lib.NonFiniteLossError as e:
        record(spec, trial_progress(workdir / "trials" / spec["trial_id"]), "diverged")
        logging.warning("Trial %s diverged: %s", spec["trial_id"], e)
        continue
      reached.append(spec)
      if rung == rungs[-1]:  # fully trained: recorded at once
        record(spec, trial_progress(workdir / "trials" / spec["trial_id"]), None)
    if rung == rungs[-1]:
      break
    # Successive halving: the best 1/reduction_factor go on to the next rung.
    def accuracy_at(spec, rung=rung):
      from cifar_jax import writers
      for r in writers.read_metrics(workdir / "trials" / spec["trial_id"]):
        if r["epoch"] == rung and r.get("eval_accuracy") is not None:
          return r["eval_accuracy"]
      return -1.0
    ranked = sorted(reached, key=lambda sp: (-accuracy_at(sp), sp["index"]))
    keep = max(1, len(ranked) // s.reduction_factor)
    for spec in ranked[keep:]:
      if spec["trial_id"] not in done:
        record(spec, trial_progress(workdir / "trials" / spec["trial_id"]), None)
    alive = ranked[:keep]


def _ray_trainable(tune_config, *, config, specs, workdir, train_split, eval_split):
  """One Ray Tune trial: trains like the local backend, reporting every epoch."""
  from ray import tune

  from cifar_jax import metrics as metrics_lib
  spec = specs[tune_config["trial_id"]]
  trial_dir = Path(workdir) / "trials" / spec["trial_id"]
  reported = []

  def report(_record=None, **extra):
    progress = trial_progress(trial_dir)
    # ASHA needs a number for every report; the row keeps None.
    tune.report({**progress, "epoch": progress["epochs"],
                 "eval_accuracy": progress["final_eval_accuracy"] or 0.0, **extra})
    reported.append(True)

  try:
    train_trial(config, spec, Path(workdir), train_split, eval_split, on_epoch=report)
  except metrics_lib.NonFiniteLossError as e:
    report(diverged=True, error=str(e))
    return
  if not reported:  # finished before a restart: report what it has
    report()


def _run_ray(config, workdir: Path, pending: list[dict], train_split, eval_split,
             record: Callable[[dict, dict, str | None], None]) -> int:
  """Runs the pending trials under Ray Tune; returns the number that failed."""
  try:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
  except ImportError as e:
    raise SearchError(f"search.backend='ray' needs Ray Tune ({e}); install it with "
                      "`pip install -e '.[tune]'` or use search.backend='local'.") from None
  s = config.search
  if not ray.is_initialized():
    ray.init(address=s.ray_address, include_dashboard=False,
             runtime_env={"env_vars": host_memory.environment()})
  specs = {spec["trial_id"]: spec for spec in pending}
  failed = []

  class Recorder(tune.Callback):
    """Appends a trial's row on the driver as soon as it ends."""

    def on_trial_complete(self, iteration, trials, trial, **info):
      result = trial.last_result or {}
      if not result.get("done") or "epochs" not in result:
        return  # ended by the search being stopped: not final, resumed next time
      progress = {k: result.get(k) for k in ("epochs", "final_eval_accuracy",
                                             "best_eval_accuracy", "time_s")}
      record(specs[trial.config["trial_id"]], progress,
             "diverged" if result.get("diverged") else None)

    def on_trial_error(self, iteration, trials, trial, **info):
      failed.append(trial.config["trial_id"])

  scheduler = None
  if s.scheduler == "asha":
    scheduler = ASHAScheduler(time_attr="epoch", max_t=s.trial_epochs,
                              grace_period=s.grace_period,
                              reduction_factor=s.reduction_factor)
  # By its importable name, so that Ray workers import it rather than unpickle
  # a copy of this module when it runs as __main__.
  from cifar_jax.search import _ray_trainable as trial_fn
  trainable = tune.with_parameters(trial_fn, config=config, specs=specs,
                                   workdir=str(workdir), train_split=train_split,
                                   eval_split=eval_split)
  resources = {"cpu": s.ray_cpus_per_trial}
  if s.ray_gpus_per_trial:
    resources["gpu"] = s.ray_gpus_per_trial
  tuner = tune.Tuner(
      tune.with_resources(trainable, resources),
      param_space={"trial_id": tune.grid_search(sorted(specs))},
      tune_config=tune.TuneConfig(metric="eval_accuracy", mode="max", num_samples=1,
                                  scheduler=scheduler,
                                  max_concurrent_trials=s.max_concurrent or None),
      run_config=tune.RunConfig(name="search", storage_path=str(workdir / "ray_results"),
                                callbacks=[Recorder()], verbose=s.ray_verbose))
  sigint_handler = signal.getsignal(signal.SIGINT)
  try:
    tuner.fit()
  finally:  # Ray Tune installs its own Ctrl-C handler and leaves it behind.
    signal.signal(signal.SIGINT, sigint_handler)
  for trial in failed:
    logging.warning("Ray trial %s failed; it is retried by the next run.", trial)
  return len(failed)


# ---- the search ---------------------------------------------------------------------
def run_search(config: ml_collections.ConfigDict, workdir: str | Path, *,
               train_split=None, eval_split=None) -> dict[str, Any]:
  """Runs (or continues) the search in `workdir`; returns a summary dict.

  `train_split`/`eval_split` (input_pipeline.ArraySplit) bypass loading
  `config.dataset`'s splits, for tests.
  """
  validate_config(config)
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  s = config.search

  sampled = sample_candidates(config)
  cohort = sampled["accepted"]
  _write_jsonl(workdir / REJECTED_FILE, sampled["rejected"])
  if len(cohort) < s.num_trials:
    logging.warning("Only %d of search.num_trials=%d candidates fit the budget in "
                    "search.max_candidates=%d draws.", len(cohort), s.num_trials,
                    s.max_candidates)

  rows = read_trials(workdir)
  done = {r["trial_id"]: r for r in rows}
  for spec in cohort:
    row = done.get(spec["trial_id"])
    if row is not None and any(row["design"][k] != spec["design"][k]
                               for k in DESIGN_FIELDS):
      raise SearchError(
          f"{workdir / TRIALS_FILE} has trial {spec['trial_id']} with another design: "
          "this directory was searched with another seed or search space. Use the "
          "settings it was started with, or a new --workdir.")
  pending = [spec for spec in cohort if spec["trial_id"] not in done]
  print(f"[search] {sampled['sampled']} candidates drawn: {len(cohort)} within the "
        f"{s.param_budget:,}-parameter budget, {len(sampled['rejected'])} over it "
        f"(not trained), {sampled['duplicates']} repeats; {len(cohort) - len(pending)} "
        f"trials already finished, {len(pending)} to run ({s.backend} backend).",
        file=sys.stderr)

  state = {"seed": s.seed, "param_budget": s.param_budget, "num_trials": s.num_trials,
           "candidates_sampled": sampled["sampled"], "accepted": len(cohort),
           "rejected_over_budget": len(sampled["rejected"]),
           "invalid": sampled["invalid"], "duplicates": sampled["duplicates"]}

  def write_state(**extra):
    (workdir / STATE_FILE).write_text(json.dumps({**state, **extra}, indent=2) + "\n")

  write_state(finished_trials=len(done))
  trained = []
  flops_cache: dict[str, float | None] = {}

  def record(spec, progress, status):
    if spec["trial_id"] in done:
      return
    if spec["trial_id"] not in flops_cache:
      flops_cache[spec["trial_id"]] = (count_flops(trial_config(config, spec["design"]))
                                       if s.flops else None)
    row = make_row(config, spec, progress, flops=flops_cache[spec["trial_id"]],
                   status=status)
    _append_jsonl(workdir / TRIALS_FILE, row)
    done[row["trial_id"]] = row
    trained.append(row["trial_id"])
    _log_row(row)

  failed = 0
  if pending:
    if train_split is None:
      d = config.dataset
      train_split = input_pipeline.load_split(d.name, d.train_split, d.data_dir,
                                              key="dataset.train_split")
      eval_split = input_pipeline.load_split(d.name, d.eval_split, d.data_dir,
                                             key="dataset.eval_split")
    if s.backend == "local":
      _run_local(config, workdir, cohort, done, train_split, eval_split, record)
    else:
      failed = _run_ray(config, workdir, pending, train_split, eval_split, record)

  rows = read_trials(workdir)
  best = best_trial(rows)
  if rows:
    plot_search(rows, workdir / PLOT_FILE, s.param_budget)
  if best is not None:
    (workdir / BEST_CONFIG_FILE).write_text(best_config_source(config, best, workdir))
  write_state(finished_trials=len(rows), failed_trials=failed,
              best_trial=best and best["trial_id"],
              best_eval_accuracy=best and best["final_eval_accuracy"])
  if best is not None:
    print(f"[search] best of {len(rows)} trials: {_describe(best)}, eval accuracy "
          f"{best['final_eval_accuracy']:.4f}. Train it fully with\n  python -m "
          f"cifar_jax.main --config={workdir / BEST_CONFIG_FILE} --workdir=runs/best",
          file=sys.stderr)
  return {"rows": rows, "best": best, "trained": trained, "failed": failed,
          "rejected": sampled["rejected"], "accepted": cohort, "state": state}


# ---- command line ---------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program: importing the module (tests, Ray
  workers, next to cifar_jax.main) defines no flags."""
  flags.DEFINE_string("workdir", None, "Directory of the search (trials, results, "
                      "best config).")
  config_flags.DEFINE_config_file("config", None, "A search config, e.g. "
                                  "configs/search_resnet_budget.py.", lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from cifar_jax import checkpoint, metrics

  known_errors = (input_pipeline.DatasetNotFoundError, checkpoint.CheckpointMismatchError,
                  metrics.NonFiniteLossError, ValueError)
  try:
    run_search(cli.config_or_exit("cifar_jax.search"), FLAGS.workdir)
  except SearchInterrupted as e:
    sys.exit(f"cifar_jax.search: {e}")
  except known_errors as e:
    sys.exit(f"cifar_jax.search: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.flags_parser("cifar_jax.search"))
