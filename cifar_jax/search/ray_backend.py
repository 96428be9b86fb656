"""The Ray Tune backend: every trial a Tune trial, ASHA as Ray's ASHAScheduler.

Ray is optional (`pip install -e '.[tune]'`) and imported only when this
backend runs. Trials run on Ray workers (`search.ray_address` joins a
cluster), train like the local backend into DIR/trials/<id>/ (so DIR must be
on storage every node sees) and report after every epoch; this process
appends a trial's row as soon as Tune says it ended. Tune's own files go to
DIR/ray_results/.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from cifar_jax import host_memory
from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib
from cifar_jax.search import artifacts
from cifar_jax.search import trials as trials_lib  # Tune's callbacks take a `trials`
from cifar_jax.search.errors import SearchError


def tune_trial(
  tune_config: dict[str, Any],
  *,
  config: ml_collections.ConfigDict,
  specs: dict[str, dict[str, Any]],
  workdir: str,
  train_split: input_pipeline.ArraySplit,
  eval_split: input_pipeline.ArraySplit,
) -> None:
  """One Ray Tune trial, on a worker: trains like the local backend, reporting
  every epoch. Module-level in a module that never runs as __main__, so that
  workers import it by name (cifar_jax.search.ray_backend.tune_trial) rather
  than unpickle a copy of the code."""
  from ray import tune

  spec = specs[tune_config["trial_id"]]
  trial_dir = artifacts.trial_dir(workdir, spec["trial_id"])
  reported = []

  def report(_record=None, **extra):
    progress = trials_lib.trial_progress(trial_dir)
    # ASHA needs a number for every report; the row keeps None.
    tune.report(
      {
        **progress,
        "epoch": progress["epochs"],
        "eval_accuracy": progress["final_eval_accuracy"] or 0.0,
        **extra,
      }
    )
    reported.append(True)

  try:
    trials_lib.train_trial(config, spec, Path(workdir), train_split, eval_split, on_epoch=report)
  except metrics_lib.NonFiniteLossError as e:
    report(diverged=True, error=str(e))
    return
  if not reported:  # finished before a restart: report what it has
    report()


def run_trials(
  config: ml_collections.ConfigDict,
  workdir: Path,
  cohort: list[dict[str, Any]],
  done: dict[str, dict[str, Any]],
  train_split: input_pipeline.ArraySplit,
  eval_split: input_pipeline.ArraySplit,
  record: trials_lib.RecordRow,
) -> int:
  """Runs the cohort's trials that are not `done` (by trial id) under Ray
  Tune, calling `record` as each ends; returns the number that failed (they
  are retried by the next run)."""
  try:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
  except ImportError as e:
    raise SearchError(
      f"search.backend='ray' needs Ray Tune ({e}); install it with "
      "`pip install -e '.[tune]'` or use search.backend='local'."
    ) from None
  s = config.search
  if not ray.is_initialized():
    ray.init(
      address=s.ray_address,
      include_dashboard=False,
      runtime_env={"env_vars": host_memory.environment()},
    )
  specs = {spec["trial_id"]: spec for spec in cohort if spec["trial_id"] not in done}
  failed = []

  class Recorder(tune.Callback):
    """Appends a trial's row on the driver as soon as it ends."""

    def on_trial_complete(self, iteration, trials, trial, **info):
      result = trial.last_result or {}
      if not result.get("done") or "epochs" not in result:
        return  # ended by the search being stopped: not final, resumed next time
      progress = {
        k: result.get(k) for k in ("epochs", "final_eval_accuracy", "best_eval_accuracy", "time_s")
      }
      record(
        specs[trial.config["trial_id"]], progress, "diverged" if result.get("diverged") else None
      )

    def on_trial_error(self, iteration, trials, trial, **info):
      failed.append(trial.config["trial_id"])

  scheduler = None
  if s.scheduler == "asha":
    scheduler = ASHAScheduler(
      time_attr="epoch",
      max_t=s.trial_epochs,
      grace_period=s.grace_period,
      reduction_factor=s.reduction_factor,
    )
  trainable = tune.with_parameters(
    tune_trial,
    config=config,
    specs=specs,
    workdir=str(workdir),
    train_split=train_split,
    eval_split=eval_split,
  )
  resources = {"cpu": s.ray_cpus_per_trial}
  if s.ray_gpus_per_trial:
    resources["gpu"] = s.ray_gpus_per_trial
  tuner = tune.Tuner(
    tune.with_resources(trainable, resources),
    param_space={"trial_id": tune.grid_search(sorted(specs))},
    tune_config=tune.TuneConfig(
      metric="eval_accuracy",
      mode="max",
      num_samples=1,
      scheduler=scheduler,
      max_concurrent_trials=s.max_concurrent or None,
    ),
    run_config=tune.RunConfig(
      name="search",
      storage_path=str(workdir / artifacts.RAY_RESULTS_DIR),
      callbacks=[Recorder()],
      verbose=s.ray_verbose,
    ),
  )
  sigint_handler = signal.getsignal(signal.SIGINT)
  try:
    tuner.fit()
  finally:  # Ray Tune installs its own Ctrl-C handler and leaves it behind.
    signal.signal(signal.SIGINT, sigint_handler)
  for trial in failed:
    logging.warning("Ray trial %s failed; it is retried by the next run.", trial)
  return len(failed)
