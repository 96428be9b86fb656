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

The modules:
  errors       SearchError, SearchInterrupted
  space        the designs drawn, their parameter and FLOP counts, a trial's config
  trials       training one trial, what it has done, its trials.jsonl row
  artifacts    the files of DIR above, the best trial and its best_config.py
  plot         search.png
  local        the local backend and its successive halving
  ray_backend  the Ray Tune backend
  driver       `run_search`: sampling, resuming, a backend, the results
  __main__     the command line

The names below load their module on first use: `python -m cifar_jax.search`
imports this package before its `__main__` switches on huge pages (which
re-executes the process), and importing jax before that would be wasted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_MODULE_OF = {
  "run_search": "driver",
  "SearchError": "errors",
  "SearchInterrupted": "errors",
  "MODEL_NAME": "space",
  "DESIGN_FIELDS": "space",
  "TRIALS_FILE": "artifacts",
  "REJECTED_FILE": "artifacts",
  "STATE_FILE": "artifacts",
  "BEST_CONFIG_FILE": "artifacts",
  "PLOT_FILE": "artifacts",
  "read_trials": "artifacts",
  "best_trial": "artifacts",
}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
  from cifar_jax.search.artifacts import BEST_CONFIG_FILE
  from cifar_jax.search.artifacts import PLOT_FILE
  from cifar_jax.search.artifacts import REJECTED_FILE
  from cifar_jax.search.artifacts import STATE_FILE
  from cifar_jax.search.artifacts import TRIALS_FILE
  from cifar_jax.search.artifacts import best_trial
  from cifar_jax.search.artifacts import read_trials
  from cifar_jax.search.driver import run_search
  from cifar_jax.search.errors import SearchError
  from cifar_jax.search.errors import SearchInterrupted
  from cifar_jax.search.space import DESIGN_FIELDS
  from cifar_jax.search.space import MODEL_NAME


def __getattr__(name: str):
  if name not in _MODULE_OF:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
  globals()[name] = value  # found directly from now on
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_MODULE_OF))
