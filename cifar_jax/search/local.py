"""The local backend: the trials one after the other in this process, with
synchronous successive halving for search.scheduler="asha".

Every trial trains to the first rung (`grace_period` epochs); the best
1/`reduction_factor` of those that reached it go on to the next rung
(grace_period * reduction_factor epochs), and so on up to `trial_epochs`. A
trial left behind at a rung is final ("stopped"), with the accuracy it had
there. A restarted search redoes the ranking from the trials' metrics, so
trials already finished still compete at the rungs they reached.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib
from cifar_jax.search import artifacts
from cifar_jax.search import space
from cifar_jax.search import trials


def rungs(search: ml_collections.ConfigDict) -> list[int]:
  """The epochs at which the trials still alive are ranked; the last is
  search.trial_epochs (the only one without a scheduler)."""
  if search.scheduler == "none":
    return [search.trial_epochs]
  epochs, epochs_at_rungs = search.grace_period, []
  while epochs < search.trial_epochs:
    epochs_at_rungs.append(epochs)
    epochs *= search.reduction_factor
  return epochs_at_rungs + [search.trial_epochs]


def run_trials(
  config: ml_collections.ConfigDict,
  workdir: Path,
  cohort: list[dict[str, Any]],
  done: dict[str, dict[str, Any]],
  train_split: input_pipeline.ArraySplit,
  eval_split: input_pipeline.ArraySplit,
  record: trials.RecordRow,
) -> int:
  """Trains the cohort's trials that are not `done` (by trial id), calling
  `record` as each becomes final. Returns the number that failed: always 0,
  since an error here stops the search."""
  s = config.search
  schedule = rungs(s)
  alive = list(cohort)
  for rung in schedule:
    reached = []
    for spec in alive:
      row = done.get(spec["trial_id"])
      if row is not None:  # final already; still ranks if it got this far
        if row["epochs"] >= rung and row["status"] != "diverged":
          reached.append(spec)
        continue
      print(f"[search] training {space.describe(spec)} to epoch {rung}", file=sys.stderr)
      trial_dir = artifacts.trial_dir(workdir, spec["trial_id"])
      try:
        trials.train_trial(config, spec, workdir, train_split, eval_split, until_epoch=rung)
      except metrics_lib.NonFiniteLossError as e:
        record(spec, trials.trial_progress(trial_dir), "diverged")
        logging.warning("Trial %s diverged: %s", spec["trial_id"], e)
        continue
      reached.append(spec)
      if rung == schedule[-1]:  # fully trained: recorded at once
        record(spec, trials.trial_progress(trial_dir), None)
    if rung == schedule[-1]:
      break

    # Successive halving: the best 1/reduction_factor go on to the next rung.
    def accuracy_at_rung(spec, rung=rung) -> float:
      accuracy = trials.eval_accuracy_at(artifacts.trial_dir(workdir, spec["trial_id"]), rung)
      return -1.0 if accuracy is None else accuracy

    ranked = sorted(reached, key=lambda spec: (-accuracy_at_rung(spec), spec["index"]))
    keep = max(1, len(ranked) // s.reduction_factor)
    for spec in ranked[keep:]:
      if spec["trial_id"] not in done:
        record(spec, trials.trial_progress(artifacts.trial_dir(workdir, spec["trial_id"])), None)
    alive = ranked[:keep]
  return 0
