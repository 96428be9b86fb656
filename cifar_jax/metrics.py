"""Metrics as sums: accumulated on the device, fetched and averaged at log time.

Steps return sums (`loss_sum`, `correct`, `count`, ...) so that batches of any
size and padded evaluation batches combine exactly. A key is summed unless
`REDUCTIONS` declares otherwise; the same table reduces over steps
(`Accumulator`) and over devices (`reduce_over_devices`, under pmap).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NO_BAD_STEP = np.iinfo(np.int32).max

# How a step metric combines across steps and devices, where not by sum.
# first_bad_step: the first step whose loss was NaN/Inf (NO_BAD_STEP: none).
REDUCTIONS: dict[str, str] = {"first_bad_step": "min"}


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


def _combine(key: str, a, b):
  return jnp.minimum(a, b) if REDUCTIONS.get(key) == "min" else a + b


def reduce_over_devices(step_metrics: dict[str, jax.Array], axis_name: str) -> dict[str, jax.Array]:
  """Inside pmap: every device's metrics combined as `REDUCTIONS` says."""
  return {
    k: (jax.lax.pmin(v, axis_name) if REDUCTIONS.get(k) == "min" else jax.lax.psum(v, axis_name))
    for k, v in step_metrics.items()
  }


class Accumulator:
  """Adds step metrics on the device without synchronising with the host."""

  def __init__(self):
    self._sums: dict[str, Any] | None = None
    self._add = jax.jit(lambda s, m: {k: _combine(k, s[k], m[k]) for k in s})

  def add(self, step_metrics: dict[str, Any]) -> None:
    self._sums = step_metrics if self._sums is None else self._add(self._sums, step_metrics)

  def fetch(self) -> dict[str, np.ndarray]:
    """Copies the sums to the host (this waits for the device)."""
    return {} if self._sums is None else jax.tree.map(np.asarray, jax.device_get(self._sums))


def to_host(sums: dict[str, np.ndarray]) -> dict[str, float]:
  """Fetched sums as plain numbers, e.g. to store in a checkpoint's JSON meta."""
  return {k: np.asarray(v).item() for k, v in sums.items() if np.ndim(v) == 0}


def from_host(sums: dict[str, float]) -> dict[str, jax.Array]:
  """`to_host`'s numbers back as step metrics (the dtypes the steps return)."""
  return {
    k: jnp.asarray(v, jnp.int32 if isinstance(v, int) else jnp.float32) for k, v in sums.items()
  }


def means(sums: dict[str, np.ndarray]) -> dict[str, float]:
  """Turns sums into `loss` and `accuracy` means over `count` examples."""
  count = float(sums["count"])
  if count == 0:
    return {"loss": float("nan"), "accuracy": float("nan")}
  return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}


def check_finite(sums: dict[str, np.ndarray], epoch: int) -> None:
  """Raises NonFiniteLossError naming the first step whose loss was not finite."""
  bad_step = int(sums.get("first_bad_step", NO_BAD_STEP))
  if bad_step != NO_BAD_STEP or not np.isfinite(sums["loss_sum"]):
    where = f"step {bad_step}" if bad_step != NO_BAD_STEP else "an unknown step"
    raise NonFiniteLossError(
      f"Training loss became NaN/Inf at {where} (epoch {epoch}). The last good "
      "checkpoint is kept. Lower --config.optimizer.learning_rate, add warmup "
      "(--config.schedule.warmup_epochs) or gradient clipping "
      "(--config.optimizer.grad_clip_norm), or disable half_precision."
    )
