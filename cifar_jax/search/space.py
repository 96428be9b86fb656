"""The search space: the `resnet_budget` designs a search draws, their cost, a
trial's training config.

Candidate i is a pure function of (search.seed, i) and the choices in
`config.search`, so the sequence is the same on every run. Its parameter count
comes from `jax.eval_shape` of the model's init (no weights allocated); one
over `search.param_budget` is rejected untrained, and one within it becomes
trial `t<i>`. A trial spec, as the rest of the search passes it around, is
{"trial_id", "index", "design", "params"}.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from cifar_jax import input_pipeline
from cifar_jax import run as run_lib
from cifar_jax.models import summary
from cifar_jax.search.errors import SearchError

MODEL_NAME = "resnet_budget"
# The `resnet_budget` fields a design sets (one entry per stage, but the pool).
DESIGN_FIELDS = ("stage_sizes", "widths", "kernel_sizes", "skip_kernel_sizes", "pool_size")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the key to fix."""
  if "search" not in config:
    raise SearchError(
      "the config has no `search` section; use configs/search_resnet_budget.py or a copy of it."
    )
  if config.model.name != MODEL_NAME:
    raise SearchError(
      f"the search samples {MODEL_NAME!r} designs; config.model.name is {config.model.name!r}."
    )
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
      raise SearchError(
        f"search.grace_period must be in [1, search.trial_epochs="
        f"{s.trial_epochs}], not {s.grace_period}."
      )
    if s.reduction_factor < 2:
      raise SearchError(f"search.reduction_factor must be at least 2, not {s.reduction_factor}.")
  if s.ray_cpus_per_trial <= 0 or s.ray_gpus_per_trial < 0 or s.max_concurrent < 0:
    raise SearchError(
      "search.ray_cpus_per_trial must be positive, ray_gpus_per_trial "
      "and max_concurrent (0: no limit) not negative."
    )
  for key in (
    "num_stages",
    "blocks",
    "channels",
    "kernel_sizes",
    "skip_kernel_sizes",
    "pool_sizes",
  ):
    choices = s[key]
    if (
      not isinstance(choices, (tuple, list))
      or not choices
      or not all(isinstance(c, int) and c >= 1 for c in choices)
    ):
      raise SearchError(
        f"search.{key} must be a non-empty tuple of positive integers "
        f"(the choices), not {choices!r}."
      )
  size = input_pipeline.IMAGE_SHAPE[0]
  if max(s.num_stages) > int(math.log2(size)) + 1:
    raise SearchError(
      f"search.num_stages: at most {int(math.log2(size)) + 1} stages fit a "
      f"{size}x{size} image, not {max(s.num_stages)}."
    )


def trial_config(
  config: ml_collections.ConfigDict, design: dict[str, Any]
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


def config_params(cfg: ml_collections.ConfigDict) -> int:
  """Trainable parameters of `cfg`'s model, from `jax.eval_shape` of its init
  (no weights are allocated)."""
  return summary.count_params(summary.abstract_variables(run_lib.create_model(cfg)))


def count_flops(cfg: ml_collections.ConfigDict) -> float | None:
  """XLA's forward FLOPs for one image (see models/summary.py), or None."""
  try:
    return summary.forward_flops(run_lib.create_model(cfg))
  except Exception as e:  # noqa: BLE001 - FLOPs are informative only.
    logging.warning("No FLOP count: %s", e)
    return None


def sample_candidates(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Draws candidates 0, 1, ... until `search.num_trials` fit the budget (or
  `search.max_candidates` were drawn). Repeated designs are skipped.

  Returns {"accepted": [trial spec], "rejected": [over budget], "invalid": n,
  "duplicates": n, "sampled": n}. Nothing is trained.
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
        params = config_params(trial_config(config, design))
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
  return {
    "accepted": accepted,
    "rejected": rejected,
    "invalid": invalid,
    "duplicates": duplicates,
    "sampled": index,
  }


def describe(spec: dict[str, Any]) -> str:
  """A trial spec in one line of the search's log."""
  d = spec["design"]
  return (
    f"{spec['trial_id']}: {spec['params']:,} params, blocks {tuple(d['stage_sizes'])}"
    f" widths {tuple(d['widths'])} kernels {tuple(d['kernel_sizes'])} skip "
    f"{tuple(d['skip_kernel_sizes'])} pool {d['pool_size']}"
  )
