"""Assembles a run from its config: the one place that does.

`build_run(config, ...) -> Run` checks the config, settles the device layout
and the compute form (dtype, convolutions) before anything is loaded or
compiled, and builds the model, optimizer and schedule, and a fresh train
state. The `Run` then places state and data on the devices and compiles the
pure steps of steps.py with their options bound from the config. Training,
`--mode=eval`, the benchmark, the search and the tests all assemble runs here,
so what a model computes and how it is compiled depends only on the config
and these arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax import augment
from cifar_jax import config_checks
from cifar_jax import data_filter
from cifar_jax import evaluator as evaluator_lib
from cifar_jax import input_pipeline
from cifar_jax import models
from cifar_jax import optim
from cifar_jax import parallel as parallel_lib
from cifar_jax import precision
from cifar_jax import records
from cifar_jax import steps
from cifar_jax.models import summary

# How many training images (the first ones of the split) a model's data-dependent
# initialisation sees, e.g. the speedrun's patch whitening.
DATA_INIT_IMAGES = 5000


# ---- the pieces ---------------------------------------------------------------
def create_model(
  config: ml_collections.ConfigDict,
  compute: precision.Compute = precision.XLA_FORM,
  bn_axis_name: str | None = None,
) -> nn.Module:
  """The model named by `config.model.name`; other `model.*` keys are options.

  `compute` (from `precision.choose`) gives its dtype, convolutions and (for
  the transformers) attention and dense-layer products; the default, `precision.XLA_FORM`, is the
  float32 XLA form (FLOPs, export, tests).
  """
  options = {k: v for k, v in config.model.items() if k != "name"}
  # The transformers' kernels, each to the models that have its field.
  for field, kernel in (("attention", compute.attention), ("dot_general", compute.dot_general)):
    if models.takes(config.model.name, field):
      options[field] = kernel
  return models.get_model(
    config.model.name,
    num_classes=config.dataset.num_classes,
    dtype=compute.dtype,
    bn_axis_name=bn_axis_name,
    conv_general_dilated=compute.conv_general_dilated,
    **options,
  )


def init_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
  dummy = jnp.zeros((1,) + input_pipeline.IMAGE_SHAPE, jnp.float32)
  rngs = {"params": rng, "dropout": rng}
  # It runs once, so LLVM's optimisations cost more than they save: without
  # them the init of resnet18 compiles in 1.6 s instead of 6.0 (swin_tiny 6.6
  # instead of 12.1) on the 2-core development CPU.
  init = (
    jax.jit(functools.partial(model.init, train=False))
    .lower(rngs, dummy)
    .compile(compiler_options={"xla_backend_optimization_level": 0})
  )
  return init(rngs, dummy)


def create_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  tx: optax.GradientTransformation,
  init_images: np.ndarray | None = None,
) -> steps.TrainState:
  """A fresh state; everything random derives from `config.seed`.

  `init_images` (uint8 training images) feed the model's data-dependent
  initialisation, if it registered one (`models.register_data_init`). Without
  them the state has the same shapes: a template to restore a checkpoint into.
  """
  # Raw uint32 key data, as checkpoints hold it.
  rng = jax.random.key_data(jax.random.key(config.seed))
  init_rng, run_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng)
  data_init = models.get_data_init(config.model.name)
  if data_init is not None and init_images is not None:
    variables = data_init(variables, steps.model_inputs(jnp.asarray(init_images)))
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  # A copy, not an alias: the state is donated, and a buffer donated twice crashes.
  ema = (
    jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})
    if records.averages_weights(config)
    else {}
  )
  return steps.TrainState.create(
    apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats, rng=run_rng, ema=ema
  )


def model_meta(config: ml_collections.ConfigDict, params: Any) -> dict[str, Any]:
  """Identifies the model a checkpoint belongs to."""
  return {
    "model": config.model.name,
    "model_options": config.model.to_dict(),
    "param_count": summary.count_params(params),
  }


def setup_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Turns on JAX's persistent compilation cache unless disabled with ""."""
  if config.compilation_cache_dir:
    path = Path(config.compilation_cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# ---- layout: settled before any data is read -------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
  """Where and how a run computes: the devices and mode, the dtype and convolutions."""

  par: parallel_lib.DataParallel
  compute: precision.Compute


def choose_layout(
  config: ml_collections.ConfigDict, *, num_devices: int | None = None, announce: bool = True
) -> Layout:
  """Checks `config` whole, then picks the layout; fails fast with the keys
  to fix, or the reason the machine cannot honour `conv_backend`. Prints the
  compute choice in one line when `announce`."""
  config_checks.validate_config(config, num_devices or jax.device_count())
  par = parallel_lib.DataParallel(config.parallel, num_devices)
  compute = precision.choose(config, num_devices=par.num_devices, parallel=par.mode)
  if announce:
    print(compute.notice, file=sys.stderr)
  setup_compilation_cache(config)
  return Layout(par, compute)


# ---- the run ------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """A config made concrete: layout, model, optimizer, schedule, fresh state.

  `state` is a host/single-device state (a template to restore a checkpoint
  into); `place` puts any such state into the layout the compiled steps take.
  """

  config: ml_collections.ConfigDict
  layout: Layout
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  steps_in_epoch: int
  state: steps.TrainState
  meta: dict[str, Any]

  @property
  def par(self) -> parallel_lib.DataParallel:
    return self.layout.par

  @property
  def compute(self) -> precision.Compute:
    return self.layout.compute

  @functools.cached_property
  def augment_fn(self) -> augment.Augment:
    return augment.build(self.config.augment)

  @functools.cached_property
  def gather(self) -> Callable[..., dict[str, jax.Array]]:
    """gather(data, indices, flips=None) -> a batch in the steps' layout."""
    return self.par.make_gather()

  def train_batch(
    self,
    data: dict[str, jax.Array],
    indices: np.ndarray,
    flips: np.ndarray | None = None,
    rows: np.ndarray | None = None,
  ) -> dict[str, jax.Array]:
    """The batch of `indices` (and `flips`) as the compiled train step takes
    it. With data filtering on, `rows` (devices, k) are the ones the proxy
    kept (`data_filter.selection`); left out (a benchmark, the compile) the
    first k of each device's share stand in."""
    batch = self.gather(data, indices, flips)
    if data_filter.enabled(self.config):
      if rows is None:
        k = data_filter.keep_per_device(self.config, self.par.num_devices)
        rows = np.tile(np.arange(k, dtype=np.int32), (self.par.num_devices, 1))
      batch["keep"] = self.par.put_rows(rows)
    return batch

  def place(self, state: steps.TrainState) -> steps.TrainState:
    return self.par.replicate(state)

  def put_split(self, split: input_pipeline.ArraySplit) -> dict[str, jax.Array]:
    """The whole split on the devices, to gather batches from."""
    return self.par.put_dataset({"image": split.images, "label": split.labels})

  def training_inputs(
    self, rng: jax.Array, batch: dict[str, jax.Array]
  ) -> tuple[jax.Array, jax.Array]:
    """What the train step feeds the model (augmented, normalised images and
    targets), alone: the benchmark times it."""
    return steps.training_inputs(
      rng,
      batch,
      augment_fn=self.augment_fn,
      num_classes=self.config.dataset.num_classes,
      label_smoothing=self.config.label_smoothing,
    )

  def compile_train(
    self, state: steps.TrainState, data: dict[str, jax.Array]
  ) -> tuple[Callable, float]:
    """`steps.train_step` with the config's options, compiled for placed
    `state` and batches gathered from `data`; returns (step, seconds)."""
    c = self.config
    step_fn = functools.partial(
      steps.train_step,
      augment_fn=self.augment_fn,
      num_classes=c.dataset.num_classes,
      label_smoothing=c.label_smoothing,
      ema_decay=c.ema_decay,
      lookahead_every=c.lookahead.every_steps if "lookahead" in c else 0,
      lookahead_decay_fn=optim.lookahead_decay_fn(c, self.steps_in_epoch),
      axis_name=self.par.axis_name,
    )
    example_batch = self.train_batch(data, np.zeros(c.batch_size, np.int32))
    example_rng = jax.random.fold_in(self.state.rng, 0)  # a step key's shape and dtype
    return self.par.compile_train(step_fn, state, example_batch, example_rng)

  def compile_proxy(
    self, state: steps.TrainState, data: dict[str, jax.Array]
  ) -> tuple[Callable, float]:
    """For the proxy run of a data filter (`data_filter.proxy_config`):
    `steps.proxy_step` compiled like `compile_train`; the step returns the
    (devices, k) rows it kept, on the host."""
    c = self.config
    step_fn = functools.partial(
      steps.proxy_step,
      keep_per_part=data_filter.keep_per_device(c, self.par.num_devices),
      parts=1 if self.par.mode == "pmap" else self.par.num_devices,
      train_every=c.data_filter.proxy_train_every,
      augment_fn=self.augment_fn,
      num_classes=c.dataset.num_classes,
      label_smoothing=c.label_smoothing,
      axis_name=self.par.axis_name,
    )
    example_batch = self.gather(data, np.zeros(c.batch_size, np.int32))
    example_rng = jax.random.fold_in(self.state.rng, 0)
    return self.par.compile_proxy(step_fn, state, example_batch, example_rng)

  def evaluator(
    self,
    split: input_pipeline.ArraySplit,
    state: steps.TrainState,
    *,
    use_ema: bool = False,
    tta: str | None = None,
    data: dict[str, jax.Array] | None = None,
  ) -> evaluator_lib.Evaluator:
    """An exact evaluator of `split` for placed `state` (`tta` None: the config's)."""
    c = self.config
    step_fn = functools.partial(
      steps.eval_step,
      num_classes=c.dataset.num_classes,
      tta=c.tta if tta is None else tta,
      use_ema=use_ema,
      axis_name=self.par.axis_name,
    )
    return evaluator_lib.Evaluator(self.par, step_fn, split, state, c.eval_batch_size, data=data)


def build_run(
  config: ml_collections.ConfigDict,
  *,
  num_train_examples: int | None = None,
  init_images: np.ndarray | None = None,
  layout: Layout | None = None,
  updates_every: int = 1,
) -> Run:
  """Assembles `config`'s run (see the module docstring).

  `num_train_examples` sizes the schedule (None: one step per epoch, for
  evaluation, where only the optimizer's state structure matters);
  `init_images` feed a data-dependent initialisation; `layout` is chosen
  here unless given (callers that choose it before loading data pass it).
  `updates_every` sizes the schedule for an optimizer step every that many
  steps (a data filter's proxy).
  """
  layout = layout or choose_layout(config)
  model = create_model(config, layout.compute, layout.par.axis_name)
  steps_in_epoch = (
    1
    if num_train_examples is None
    else optim.steps_per_epoch(num_train_examples, config.batch_size)
  )
  updates_in_epoch = steps_in_epoch if updates_every == 1 else steps_in_epoch / updates_every
  tx, learning_rate_fn = optim.create_optimizer(config, updates_in_epoch)
  state = create_train_state(config, model, tx, init_images=init_images)
  return Run(
    config=config,
    layout=layout,
    model=model,
    tx=tx,
    learning_rate_fn=learning_rate_fn,
    steps_in_epoch=steps_in_epoch,
    state=state,
    meta=model_meta(config, state.params),
  )
