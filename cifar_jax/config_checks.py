"""Checks of a whole config before anything is loaded or compiled.

`config_errors` lists every value the run cannot use, one message per key
naming it and what it must be; `validate_config` raises them together, so a
user fixes a command line once, not once per mistake.
"""

from __future__ import annotations

import math
import re

import ml_collections

from cifar_jax import augment
from cifar_jax import data_filter
from cifar_jax import distributed
from cifar_jax import models
from cifar_jax import optim
from cifar_jax import parallel as parallel_lib
from cifar_jax import precision
from cifar_jax import profiling


def config_errors(config: ml_collections.ConfigDict, num_devices: int | None = None) -> list[str]:
  """Every value the loop cannot use, as one message each naming the key."""
  errors = []

  def check(ok: bool, key: str, wanted: str) -> None:
    if not ok:
      value = config
      for part in key.split("."):
        value = value[part]
      errors.append(f"config.{key} must be {wanted}, not {value!r}.")

  def number(key: str) -> float:
    value = config
    for part in key.split("."):
      value = value[part]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

  check(config.parallel in ("jit", "pmap"), "parallel", "'jit' or 'pmap'")
  check(number("num_epochs") > 0, "num_epochs", "a positive number of epochs (e.g. 10 or 9.9)")
  for key in (
    "batch_size",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint.every_epochs",
    "checkpoint.max_to_keep",
  ):
    check(isinstance(number(key), int) and number(key) > 0, key, "a positive integer")
  if num_devices is not None:
    for key in ("batch_size", "eval_batch_size"):
      value = number(key)
      if isinstance(value, int) and value > 0:
        error = parallel_lib.batch_size_error(value, num_devices, key)
        if error:
          errors.append(error)
  check(
    number("checkpoint.every_minutes") >= 0,
    "checkpoint.every_minutes",
    ">= 0 (0: checkpoints only at the ends of epochs)",
  )
  check(
    isinstance(config.eval_every_epochs, int) and config.eval_every_epochs >= 0,
    "eval_every_epochs",
    ">= 0 (0: only after the last epoch)",
  )
  check(number("optimizer.learning_rate") > 0, "optimizer.learning_rate", "> 0")
  if config.optimizer.name == "muon":
    check(number("optimizer.muon_learning_rate") > 0, "optimizer.muon_learning_rate", "> 0")
    check(0 <= number("optimizer.muon_momentum") < 1, "optimizer.muon_momentum", "in [0, 1)")
  for key in ("optimizer.momentum", "optimizer.b1", "optimizer.b2", "ema_decay", "label_smoothing"):
    check(0 <= number(key) < 1, key, "in [0, 1)")
  for key in (
    "optimizer.weight_decay",
    "optimizer.grad_clip_norm",
    "schedule.warmup_epochs",
    "optimizer.lr_base_batch_size",
    "schedule.end_lr_factor",
  ):
    check(number(key) >= 0, key, ">= 0")
  check(number("optimizer.eps") > 0, "optimizer.eps", "> 0")
  for key in ("norm_lr_extra_params", "freeze_params"):
    try:
      re.compile(config.optimizer.get(key, ""))
    except (re.error, TypeError) as e:
      errors.append(
        f"config.optimizer.{key} must be a regular expression over parameter names "
        f"such as 'whiten/bias' ({e}), not {config.optimizer.get(key)!r}."
      )
  if "lookahead" in config and config.lookahead.every_steps:
    check(
      isinstance(config.lookahead.every_steps, int) and config.lookahead.every_steps > 0,
      "lookahead.every_steps",
      "a positive integer (0: off)",
    )
    check(0 <= number("lookahead.decay") < 1, "lookahead.decay", "in [0, 1)")
    if config.ema_decay:
      errors.append(
        "config.ema_decay and config.lookahead.every_steps both average the weights "
        "into the same slot: set one of them to 0."
      )
  if config.optimizer.get("freeze_params"):
    check(number("optimizer.freeze_after_epochs") >= 0, "optimizer.freeze_after_epochs", ">= 0")
    check(
      config.optimizer.get("freeze_lr", "schedule") in ("schedule", "linear"),
      "optimizer.freeze_lr",
      "'schedule' or 'linear'",
    )
  check(number("optimizer.norm_lr_multiplier") >= 0, "optimizer.norm_lr_multiplier", ">= 0")
  check(0 <= number("schedule.pct_start") < 1, "schedule.pct_start", "in [0, 1)")
  check(number("schedule.div_factor") > 0, "schedule.div_factor", "> 0")
  check(number("schedule.final_div_factor") > 0, "schedule.final_div_factor", "> 0")
  check(0 < number("schedule.decay_factor") <= 1, "schedule.decay_factor", "in (0, 1]")
  if config.hard_mining.enabled:
    check(
      isinstance(number("hard_mining.start_epoch"), int) and number("hard_mining.start_epoch") >= 0,
      "hard_mining.start_epoch",
      ">= 0",
    )
    check(number("hard_mining.power") >= 0, "hard_mining.power", ">= 0")
    check(
      0 <= number("hard_mining.uniform_fraction") <= 1, "hard_mining.uniform_fraction", "in [0, 1]"
    )
  check(
    isinstance(config.dataset.train_split, str) and config.dataset.train_split.strip(),
    "dataset.train_split",
    "a tfds split such as 'train[:45000]'",
  )
  try:
    ops = augment.parse(config.augment)
  except ValueError as e:
    errors.append(str(e))
  else:
    if config.alternating_flip and any(name == "flip" for name, _ in ops):
      errors.append(
        "config.alternating_flip replaces the random flip: remove 'flip' "
        f"from --config.augment ({config.augment!r})."
      )
  if config.model.name not in models.model_names():
    try:
      models.get_model(config.model.name)
    except ValueError as e:  # names the registered models
      errors.append(str(e))
  try:  # unknown optimizer or schedule names, unsupported combinations
    optim.create_optimizer(config, 1)
  except ValueError as e:
    errors.append(str(e))
  errors += precision.validate(config)
  try:
    profiling.parse_steps(config.get("profile_steps"))
  except ValueError as e:
    errors.append(str(e))
  errors += data_filter.config_errors(config, num_devices)
  if "distributed" in config:  # configs saved before it existed
    errors += distributed.config_errors(config)
  return errors


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Fails fast, before any data or compilation, with every key to fix."""
  errors = config_errors(config, num_devices)
  if len(errors) == 1:
    raise ValueError(errors[0])
  if errors:
    raise ValueError(f"{len(errors)} problems with the config:\n  " + "\n  ".join(errors))
