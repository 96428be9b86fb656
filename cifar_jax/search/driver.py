"""Running a search (`run_search`): draw the candidates, check the directory
was searched with the same space, skip the finished trials, train the others
on the configured backend, and write the results.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from cifar_jax import input_pipeline
from cifar_jax.search import artifacts
from cifar_jax.search import local
from cifar_jax.search import plot
from cifar_jax.search import ray_backend
from cifar_jax.search import space
from cifar_jax.search import trials
from cifar_jax.search.errors import SearchError

BACKENDS = {"local": local, "ray": ray_backend}


def _log_row(row: dict[str, Any]) -> None:
  acc = row["final_eval_accuracy"]
  print(
    f"[search] {row['trial_id']} {row['status']} after {row['epochs']} epochs: "
    f"eval accuracy {'-' if acc is None else f'{acc:.4f}'} ({row['time_s']:.0f}s)",
    file=sys.stderr,
  )


def _check_same_space(
  workdir: Path, cohort: list[dict[str, Any]], done: dict[str, dict[str, Any]]
) -> None:
  for spec in cohort:
    row = done.get(spec["trial_id"])
    if row is not None and any(row["design"][k] != spec["design"][k] for k in space.DESIGN_FIELDS):
      raise SearchError(
        f"{workdir / artifacts.TRIALS_FILE} has trial {spec['trial_id']} with another "
        "design: this directory was searched with another seed or search space. Use the "
        "settings it was started with, or a new --workdir."
      )


def _load_splits(
  config: ml_collections.ConfigDict,
) -> tuple[input_pipeline.ArraySplit, input_pipeline.ArraySplit]:
  """Loaded once, for all trials."""
  d = config.dataset
  return (
    input_pipeline.load_split(d.name, d.train_split, d.data_dir, key="dataset.train_split"),
    input_pipeline.load_split(d.name, d.eval_split, d.data_dir, key="dataset.eval_split"),
  )


def run_search(
  config: ml_collections.ConfigDict, workdir: str | Path, *, train_split=None, eval_split=None
) -> dict[str, Any]:
  """Runs (or continues) the search in `workdir`; returns a summary dict.

  `train_split`/`eval_split` (input_pipeline.ArraySplit) bypass loading
  `config.dataset`'s splits, for tests.
  """
  space.validate_config(config)
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  s = config.search

  sampled = space.sample_candidates(config)
  cohort = sampled["accepted"]
  artifacts.write_rejected(workdir, sampled["rejected"])
  if len(cohort) < s.num_trials:
    logging.warning(
      "Only %d of search.num_trials=%d candidates fit the budget in "
      "search.max_candidates=%d draws.",
      len(cohort),
      s.num_trials,
      s.max_candidates,
    )

  done = {r["trial_id"]: r for r in artifacts.read_trials(workdir)}
  _check_same_space(workdir, cohort, done)
  pending = [spec for spec in cohort if spec["trial_id"] not in done]
  print(
    f"[search] {sampled['sampled']} candidates drawn: {len(cohort)} within the "
    f"{s.param_budget:,}-parameter budget, {len(sampled['rejected'])} over it "
    f"(not trained), {sampled['duplicates']} repeats; {len(cohort) - len(pending)} "
    f"trials already finished, {len(pending)} to run ({s.backend} backend).",
    file=sys.stderr,
  )

  state = {
    "seed": s.seed,
    "param_budget": s.param_budget,
    "num_trials": s.num_trials,
    "candidates_sampled": sampled["sampled"],
    "accepted": len(cohort),
    "rejected_over_budget": len(sampled["rejected"]),
    "invalid": sampled["invalid"],
    "duplicates": sampled["duplicates"],
  }
  artifacts.write_state(workdir, {**state, "finished_trials": len(done)})
  trained = []
  flops_cache: dict[str, float | None] = {}

  def record(spec, progress, status):
    if spec["trial_id"] in done:
      return
    if spec["trial_id"] not in flops_cache:
      flops_cache[spec["trial_id"]] = (
        space.count_flops(space.trial_config(config, spec["design"])) if s.flops else None
      )
    row = trials.make_row(
      config, spec, progress, flops=flops_cache[spec["trial_id"]], status=status
    )
    artifacts.append_trial(workdir, row)
    done[row["trial_id"]] = row
    trained.append(row["trial_id"])
    _log_row(row)

  failed = 0
  if pending:
    if train_split is None:
      train_split, eval_split = _load_splits(config)
    failed = BACKENDS[s.backend].run_trials(
      config, workdir, cohort, done, train_split, eval_split, record
    )

  rows = artifacts.read_trials(workdir)
  best = artifacts.best_trial(rows)
  if rows:
    plot.plot_search(rows, workdir / artifacts.PLOT_FILE, s.param_budget)
  if best is not None:
    artifacts.write_best_config(config, best, workdir)
  artifacts.write_state(
    workdir,
    {
      **state,
      "finished_trials": len(rows),
      "failed_trials": failed,
      "best_trial": best and best["trial_id"],
      "best_eval_accuracy": best and best["final_eval_accuracy"],
    },
  )
  if best is not None:
    print(
      f"[search] best of {len(rows)} trials: {space.describe(best)}, eval accuracy "
      f"{best['final_eval_accuracy']:.4f}. Train it fully with\n  python -m "
      f"cifar_jax.main --config={workdir / artifacts.BEST_CONFIG_FILE} "
      "--workdir=runs/best",
      file=sys.stderr,
    )
  return {
    "rows": rows,
    "best": best,
    "trained": trained,
    "failed": failed,
    "rejected": sampled["rejected"],
    "accepted": cohort,
    "state": state,
  }
