"""Data parallelism: one device mesh, and the same pure steps under jit or pmap.

`parallel="jit"` (default) compiles the step once for a 1-D mesh of all
devices: the global batch is sharded on its first axis, the train state is
replicated, and XLA inserts the gradient all-reduce. BatchNorm sees the global
batch because jit works on global arrays. `parallel="pmap"` maps the same step
over devices with `axis_name="batch"`; the step then `pmean`s gradients and the
models average BatchNorm statistics over that axis (`bn_axis_name`), so both
give the result of one device on the same global batch.

The whole dataset lives on the devices as uint8 and batches are gathered there
from index plans, so nothing but a few indices crosses from the host per step.

Across processes (distributed.py) the mesh spans every process's devices.
Every process holds the same host values (the dataset, the state, the
index plan); `device_put` and the jitted gather then fill only this
process's devices, each with its share of the global batch.
"""

from __future__ import annotations

import time
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXIS = PMAP_AXIS = "batch"


def batch_size_error(batch_size: int, num_devices: int, what: str = "batch_size") -> str | None:
  """Why `batch_size` cannot be split over `num_devices`, or None if it can."""
  if batch_size % num_devices == 0:
    return None
  return (
    f"config.{what}={batch_size} must be a multiple of the {num_devices} devices "
    f"(e.g. {max(num_devices, batch_size // num_devices * num_devices)})."
  )


class DataParallel:
  """Places data and state on devices and compiles steps for one mode."""

  def __init__(self, mode: str = "jit", num_devices: int | None = None):
    if mode not in ("jit", "pmap"):
      raise ValueError(f"parallel must be 'jit' or 'pmap', not {mode!r}.")
    devices = jax.devices()
    if num_devices:
      if num_devices > len(devices):
        raise ValueError(f"Asked for {num_devices} devices but only {len(devices)} exist.")
      devices = devices[:num_devices]
    self.mode = mode
    self.num_devices = len(devices)
    # Auto axes: XLA propagates the batch sharding through any model, so the
    # step needs no sharding annotations of its own.
    # pmap shards over an axis of this name too, so one mesh serves both modes.
    self.mesh = jax.make_mesh(
      (self.num_devices,), (MESH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(MESH_AXIS))

  @property
  def axis_name(self) -> str | None:
    """The collective axis the step and BatchNorm must reduce over (pmap only)."""
    return PMAP_AXIS if self.mode == "pmap" else None

  def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
    error = batch_size_error(batch_size, self.num_devices, what)
    if error:
      raise ValueError(error)

  # ---- placement -------------------------------------------------------------
  def replicate(self, tree: Any) -> Any:
    """A host/single-device tree -> the layout the compiled steps take."""
    if jax.process_count() > 1:  # from host values: arrays cannot cross hosts
      tree = jax.device_get(tree)
    if self.mode == "jit":
      return jax.device_put(tree, self.replicated)
    n = self.num_devices
    stack = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), t)  # noqa: E731
    return jax.jit(stack, out_shardings=self.sharded)(jax.device_put(tree, self.replicated))

  def unreplicate(self, tree: Any) -> Any:
    """The inverse of `replicate`: one copy of the state, e.g. to checkpoint.
    Across processes it is host numpy (every process holds the same), which
    orbax writes once, from the primary process."""
    if self.mode == "pmap":
      tree = _first_device(tree)
    if jax.process_count() > 1:
      return jax.tree.map(np.asarray, tree)
    return tree

  def put_dataset(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Copies whole arrays (e.g. uint8 images, labels) to every device once."""
    return jax.device_put(arrays, self.replicated)

  def make_gather(self) -> Callable[..., dict[str, jax.Array]]:
    """Returns gather(dataset, indices, flips=None) -> batch, sharded on the
    batch axis (and split into a leading device axis under pmap). `flips`
    (bool per index) mirrors those images left-right (alternating flip)."""
    n, pmap = self.num_devices, self.mode == "pmap"

    def gather(dataset, indices, flips=None):
      batch = {k: v[indices] for k, v in dataset.items()}
      if flips is not None:
        batch["image"] = jnp.where(
          flips[:, None, None, None], batch["image"][:, :, ::-1], batch["image"]
        )
      if pmap:
        batch = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
      return batch

    return jax.jit(gather, out_shardings=self.sharded)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host batch -> sharded device batch (used for masks and tests)."""
    if self.mode == "pmap":
      batch = jax.tree.map(lambda x: x.reshape((self.num_devices, -1) + x.shape[1:]), batch)
    return jax.device_put(batch, self.sharded)

  # ---- compilation -----------------------------------------------------------
  def _compile_step(self, step_fn: Callable, state, batch, rng) -> Callable:
    """AOT-compiles `step_fn(state, batch, rng) -> (state, out)`: under jit
    with the state donated and the outputs replicated, under pmap mapped over
    the devices with the key shared."""
    if self.mode == "jit":
      return (
        jax.jit(step_fn, donate_argnums=0, out_shardings=self.replicated)
        .lower(state, batch, rng)
        .compile()
      )
    # No donation under pmap: with it, jax 0.10's pmap on CPU intermittently
    # aborted while reading the returned state (seen once in four CI runs).
    return (
      jax.pmap(step_fn, axis_name=PMAP_AXIS, in_axes=(0, 0, None))
      .lower(state, batch, rng)
      .compile()
    )

  def compile_train(self, train_step: Callable, state, batch, rng) -> tuple[Callable, float]:
    """AOT-compiles `train_step(state, batch, rng) -> (state, metrics)` with the
    state donated (jit mode). Returns (step, compile seconds); the step's metrics are
    global sums without a device axis in both modes."""
    start = time.perf_counter()
    compiled = self._compile_step(train_step, state, batch, rng)
    if self.mode == "jit":
      return compiled, time.perf_counter() - start

    def step(state, batch, rng):
      state, metrics = compiled(state, batch, rng)
      return state, _first_device(metrics)  # psum'd: every device holds the total

    return step, time.perf_counter() - start

  def compile_proxy(self, proxy_step: Callable, state, batch, rng) -> tuple[Callable, float]:
    """`compile_train` for the data filter's `proxy_step(state, batch, rng) ->
    (state, keep)`: the compiled step returns `keep` as host numpy of shape
    (devices, k), the rows each device's share of the batch keeps."""
    start = time.perf_counter()
    compiled = self._compile_step(proxy_step, state, batch, rng)
    n, jit = self.num_devices, self.mode == "jit"

    def step(state, batch, rng):
      state, keep = compiled(state, batch, rng)
      keep = keep.addressable_data(0) if jit else _whole(keep)  # replicated / per device
      return state, np.asarray(keep).reshape(n, -1)

    return step, time.perf_counter() - start

  def put_rows(self, rows: np.ndarray) -> jax.Array:
    """Host (devices, k) row indices -> each device's k (see steps.select_rows)."""
    return jax.device_put(rows, self.sharded)

  def compile_eval(self, eval_step: Callable, state, batch) -> tuple[Callable, float]:
    """AOT-compiles `eval_step(state, batch) -> (metrics, per_example)`; each
    per-example output comes back as one (global_batch,) array in both modes."""
    start = time.perf_counter()
    if self.mode == "jit":
      step = jax.jit(eval_step, out_shardings=self.replicated).lower(state, batch).compile()
      return step, time.perf_counter() - start
    compiled = jax.pmap(eval_step, axis_name=PMAP_AXIS).lower(state, batch).compile()

    def step(state, batch):
      metrics, per_example = compiled(state, batch)
      return _first_device(metrics), jax.tree.map(lambda x: _whole(x).reshape(-1), per_example)

    return step, time.perf_counter() - start


def _whole(x: jax.Array) -> jax.Array | np.ndarray:
  """The global value of a device-sharded pmap output, also where some of its
  devices belong to other processes (each then contributes its rows)."""
  if x.is_fully_addressable:
    return x
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(x, tiled=True)


def _first_device(tree):
  """The first device's row of pmap outputs (which every device holds alike),
  taken from a device of this process: the others may be on other hosts."""
  return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)
