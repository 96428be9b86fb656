"""Evaluates a trained run's checkpoint on a split without retraining.

Restores the best checkpoint of a workdir (else the latest), evaluates
`config.dataset.eval_split` exactly (every example once), and writes
`DIR/eval_<split>.json` (accuracy, loss, per-class accuracy, confusion matrix
with class names) and `DIR/eval_<split>_mistakes.npz` (misclassified images for
the report), and logs the confusion matrix as an image to TensorBoard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from cifar_jax import checkpoint
from cifar_jax import distributed
from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib
from cifar_jax import records
from cifar_jax import run as run_lib
from cifar_jax import writers

MAX_MISTAKES_SAVED = 64


def safe_split_name(split: str) -> str:
  """'train[45000:]' -> 'train_45000_': usable in a file name."""
  return writers.file_safe_name(split, "split")


def eval_file(workdir: str | Path, split: str) -> Path:
  return Path(workdir) / f"eval_{safe_split_name(split)}.json"


def summarize(sums: dict[str, np.ndarray], class_names: tuple[str, ...]) -> dict[str, Any]:
  """Accuracy, loss, per-class accuracy and the confusion matrix from sums."""
  confusion = np.asarray(sums["confusion"]).round().astype(np.int64)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {
    **metrics_lib.means(sums),
    "num_examples": int(round(float(sums["count"]))),
    "class_names": list(class_names),
    "per_class_accuracy": {n: float(a) for n, a in zip(class_names, per_class)},
    "confusion_matrix": confusion.tolist(),
  }


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | Path,
  *,
  split: input_pipeline.ArraySplit | None = None,
  which: str = "best_or_latest",
) -> dict[str, Any]:
  """Restores the run in `workdir` and evaluates it; returns what it wrote."""
  workdir = Path(workdir)
  # The optimizer must match the run's for its state to restore; the schedule
  # length does not matter here.
  run = run_lib.build_run(config)
  best_metric = records.best_metric(config)
  ckpt = checkpoint.Checkpointer(
    workdir, keep_best=True, read_only=True, meta=run.meta, best_metric=best_metric
  )
  restored = ckpt.restore(run.state, which)
  ckpt.close()
  if restored is None:
    raise checkpoint.NoCheckpointError(
      f"No checkpoint in {workdir.absolute()}: train first with "
      f"`python -m cifar_jax.main --config=... --workdir={workdir}`."
    )
  state, meta = restored
  if split is None:
    split = input_pipeline.load_split(
      config.dataset.name,
      config.dataset.eval_split,
      config.dataset.data_dir,
      key="dataset.eval_split",
    )
  use_ema = records.averages_weights(config)
  if distributed.is_primary():
    print(f"{workdir}: {_which_weights(config, meta, which, best_metric)}", file=sys.stderr)
  state = run.place(state)
  evaluator = run.evaluator(split, state, use_ema=use_ema)
  sums, per_example = evaluator.run(state, per_example=True, desc=f"eval {split.name}")
  predictions = per_example["prediction"]
  result = {
    "split": config.dataset.eval_split,
    "step": int(meta.get("step", -1)),
    "model": config.model.name,
    "param_count": meta.get("param_count"),
    "ema": use_ema,
    "weights": "ema" if use_ema else "params",
    "selected_by": best_metric if which != "latest" else "latest",
    "tta": config.tta,
    **summarize(sums, split.class_names),
  }
  path = eval_file(workdir, config.dataset.eval_split)
  if distributed.is_primary():  # every process evaluated; one writes
    _write_result(workdir, path, result, split, predictions)
  print(
    f"{config.model.name} step {result['step']}: accuracy {result['accuracy']:.4f} "
    f"loss {result['loss']:.4f} on {result['num_examples']} examples of "
    f"{result['split']} -> {path}",
    file=sys.stderr,
  )
  print(f"accuracy: {result['accuracy']:.4f}")
  return result


def _which_weights(config, meta: dict, which: str, best_metric: str) -> str:
  """One line: which weights of which checkpoint are evaluated, and why that one."""
  if config.ema_decay:
    weights = f"the EMA weights (ema_decay={config.ema_decay})"
  elif records.averages_weights(config):
    weights = f"the lookahead's slow weights (every {config.lookahead.every_steps} steps)"
  else:
    weights = "the trained weights"
  value = checkpoint.score(meta, best_metric)
  if which == "latest":
    why = "the latest checkpoint"
  elif value is None:
    why = f"the latest checkpoint (no {best_metric} was recorded)"
  else:
    why = f"the checkpoint with the best {best_metric} ({value:.4f})"
  return f"evaluating {weights} of step {meta.get('step', '?')}, {why}"


def _write_result(
  workdir: Path,
  path: Path,
  result: dict[str, Any],
  split: input_pipeline.ArraySplit,
  predictions: np.ndarray,
) -> None:
  """eval_<split>.json, the mistakes file and the TensorBoard confusion image."""
  path.write_text(json.dumps(result, indent=2) + "\n")
  from cifar_jax.report import figures  # matplotlib, only needed here

  writer = writers.MetricWriter(workdir)
  writer.write_image("eval/confusion_matrix", result["step"], figures.confusion_image(result))
  writer.close()
  wrong = np.flatnonzero(predictions != split.labels)[:MAX_MISTAKES_SAVED]
  np.savez_compressed(
    path.with_name(path.stem + "_mistakes.npz"),
    images=split.images[wrong],
    labels=split.labels[wrong],
    predictions=predictions[wrong],
    indices=wrong,
    class_names=np.asarray(split.class_names),
  )
