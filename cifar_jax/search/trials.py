"""One trial: training it (to a given epoch, resuming), how far it got, and
its row in trials.jsonl.

A trial is an ordinary training run in DIR/trials/<id>/ (`train.train_and_evaluate`
with `space.trial_config`), so what it has done is read from that run: whole
epochs from its latest checkpoint (where a resume starts), accuracies and
times from its metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from typing import Callable

import ml_collections

from cifar_jax import checkpoint
from cifar_jax import input_pipeline
from cifar_jax import optim
from cifar_jax import train
from cifar_jax import writers
from cifar_jax.search import artifacts
from cifar_jax.search import space
from cifar_jax.search.errors import SearchInterrupted


def epochs_done(
  cfg: ml_collections.ConfigDict, trial_dir: Path, train_split: input_pipeline.ArraySplit
) -> int:
  """Whole epochs in the trial's latest finalized checkpoint."""
  step = checkpoint.latest_step(trial_dir)
  if step is None:
    return 0
  return step // optim.steps_per_epoch(len(train_split), cfg.batch_size)


def trial_progress(trial_dir: Path) -> dict[str, Any]:
  """Epochs, final and best eval accuracy and training time from metrics.jsonl."""
  records = writers.read_metrics(trial_dir)
  accuracies = [r["eval_accuracy"] for r in records if r.get("eval_accuracy") is not None]
  return {
    "epochs": records[-1]["epoch"] if records else 0,
    "final_eval_accuracy": records[-1].get("eval_accuracy") if records else None,
    "best_eval_accuracy": max(accuracies) if accuracies else None,
    "time_s": round(sum(r.get("epoch_time_s", 0.0) + r.get("compile_s", 0.0) for r in records), 2),
  }


def eval_accuracy_at(trial_dir: Path, epoch: int) -> float | None:
  """The eval accuracy the trial had after `epoch` epochs, None if not evaluated."""
  for record in writers.read_metrics(trial_dir):
    if record["epoch"] == epoch and record.get("eval_accuracy") is not None:
      return record["eval_accuracy"]
  return None


def train_trial(
  config: ml_collections.ConfigDict,
  spec: dict[str, Any],
  workdir: Path,
  train_split: input_pipeline.ArraySplit,
  eval_split: input_pipeline.ArraySplit,
  *,
  until_epoch: int | None = None,
  on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
  """Trains (or resumes) trial `spec` into workdir/trials/<id>, up to
  `until_epoch` epochs (default: all of search.trial_epochs), calling
  `on_epoch(record)` after each epoch. Returns its dir.

  A trial stopped before search.trial_epochs keeps that schedule (its
  learning rate has not decayed), so training on later resumes the same run.
  """
  cfg = space.trial_config(config, spec["design"])
  trial_dir = artifacts.trial_dir(workdir, spec["trial_id"])
  target = config.search.trial_epochs if until_epoch is None else until_epoch

  def end_of_epoch(record) -> bool:
    if on_epoch is not None:
      on_epoch(record)
    return record["epoch"] >= target  # True stops after this epoch, its checkpoint saved

  if epochs_done(cfg, trial_dir, train_split) >= target:
    return trial_dir
  interrupted = SearchInterrupted(
    f"trial {spec['trial_id']} was interrupted (its checkpoint "
    "is saved); run the same command again to continue."
  )
  try:
    train.train_and_evaluate(
      cfg, trial_dir, train_split=train_split, eval_split=eval_split, epoch_callback=end_of_epoch
    )
  except train.TrainingStopped:  # Ctrl-C inside the loop
    raise interrupted from None
  if epochs_done(cfg, trial_dir, train_split) < target:
    raise interrupted
  return trial_dir


# What a backend is given to end a trial: record(spec, progress, status) makes
# its row (`make_row`) and appends it to trials.jsonl, once per trial.
RecordRow = Callable[[dict[str, Any], dict[str, Any], str | None], None]


def make_row(
  config: ml_collections.ConfigDict,
  spec: dict[str, Any],
  progress: dict[str, Any],
  *,
  flops: float | None,
  status: str | None = None,
) -> dict[str, Any]:
  """The trials.jsonl line of a finished trial: "completed" when it trained
  all of search.trial_epochs, else "stopped" unless `status` says otherwise
  (the backends pass "diverged")."""
  model = dict(spec["design"])  # the searched fields first, then the fixed ones
  model.update(
    {
      k: (list(v) if isinstance(v, tuple) else v)
      for k, v in config.model.to_dict().items()
      if k != "name" and k not in model
    }
  )
  if status is None:
    status = "completed" if progress["epochs"] >= config.search.trial_epochs else "stopped"
  return {
    "trial_id": spec["trial_id"],
    "index": spec["index"],
    "status": status,
    "design": model,
    "params": spec["params"],
    "flops": flops,
    "epochs": progress["epochs"],
    "final_eval_accuracy": progress["final_eval_accuracy"],
    "best_eval_accuracy": progress["best_eval_accuracy"],
    "time_s": progress["time_s"],
  }
