"""Train state, the pure train and eval steps, and the epoch loop around them.

`train_step(state, batch, rng) -> (state, metrics)` and
`eval_step(state, batch) -> (metrics, per_example)` are module-level pure
functions; `parallel.DataParallel` compiles them once for jit or pmap. Batches
carry uint8 images: augmentation and normalisation happen inside the step, on
the device. Metrics are sums, fetched to the host only when logged.
"""
from __future__ import annotations

import functools
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from cifar_jax import augment
from cifar_jax import checkpoint
from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib
from cifar_jax import models
from cifar_jax import optim
from cifar_jax import parallel as parallel_lib
from cifar_jax import precision
from cifar_jax import workdir as workdir_lib
from cifar_jax import writers

# How many training images (the first ones of the split) a model's data-dependent
# initialisation sees, e.g. the speedrun's patch whitening.
DATA_INIT_IMAGES = 5000


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from flax) plus BatchNorm statistics,
  the base PRNG key of the run and the EMA weights ({} when EMA is off)."""
  batch_stats: Any = None
  rng: jax.Array = None
  ema: Any = None


# ---- construction ------------------------------------------------------------
def create_model(config: ml_collections.ConfigDict,
                 compute: precision.Compute = precision.XLA_FORM,
                 bn_axis_name: str | None = None) -> nn.Module:
  """The model named by `config.model.name`; other `model.*` keys are options.

  `compute` (from `precision.choose`) gives its dtype and convolutions; the
  default, `precision.XLA_FORM`, is the float32 XLA form (FLOPs, tests).
  """
  options = {k: v for k, v in config.model.items() if k != "name"}
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  return models.get_model(config.model.name, num_classes=config.dataset.num_classes,
                          dtype=compute.dtype, bn_axis_name=bn_axis_name,
                          conv_general_dilated=compute.conv_general_dilated, **options)


def choose_compute(config: ml_collections.ConfigDict,
                   par: parallel_lib.DataParallel) -> precision.Compute:
  """`precision.choose` for the run's layout, announced in one line."""
  compute = precision.choose(config, num_devices=par.num_devices, parallel=par.mode)
  print(compute.notice, file=sys.stderr)
  return compute


def init_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
  dummy = jnp.zeros((1,) + input_pipeline.IMAGE_SHAPE, jnp.float32)
  rngs = {"params": rng, "dropout": rng}
  # It runs once, so LLVM's optimisations cost more than they save: without
  # them the init of resnet18 compiles in 1.6 s instead of 6.0 (swin_tiny 6.6
  # instead of 12.1) on the 2-core development CPU.
  init = jax.jit(functools.partial(model.init, train=False)).lower(rngs, dummy).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return init(rngs, dummy)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       tx: optax.GradientTransformation,
                       init_images: np.ndarray | None = None) -> TrainState:
  """A fresh state; everything random derives from `config.seed`.

  `init_images` (uint8 training images) feed the model's data-dependent
  initialisation, if it registered one (`models.register_data_init`). Without
  them the state has the same shapes: a template to restore a checkpoint into.
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, run_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng)
  data_init = models.get_data_init(config.model.name)
  if data_init is not None and init_images is not None:
    variables = data_init(variables, normalize(_to_unit_float(jnp.asarray(init_images))))
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  # A copy, not an alias: the state is donated, and a buffer donated twice crashes.
  ema = (jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})
         if config.ema_decay else {})
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=batch_stats, rng=run_rng, ema=ema)


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ---- the pure steps --------------------------------------------------------------
def normalize(images: jax.Array) -> jax.Array:
  """[0, 1] images -> per-channel standardised with the CIFAR-10 statistics."""
  mean = jnp.asarray(input_pipeline.CIFAR10_MEAN, images.dtype)
  std = jnp.asarray(input_pipeline.CIFAR10_STD, images.dtype)
  return (images - mean) / std


def _to_unit_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               augment_fn: augment.Augment, num_classes: int,
               label_smoothing: float = 0.0, ema_decay: float = 0.0,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch {'image': uint8 (B,H,W,C), 'label': (B,)}.

  Under pmap (`axis_name` set) gradients and metrics are reduced over devices;
  each device folds its index into the shared step key for its own random
  augmentation and dropout.
  """
  if axis_name is not None:  # each device augments and drops out differently
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  aug_rng, dropout_rng = jax.random.split(rng)
  labels = batch["label"]
  images, targets = augment_fn(aug_rng, _to_unit_float(batch["image"]),
                               jax.nn.one_hot(labels, num_classes))
  images = normalize(images)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_rng})
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    return losses.mean(), (losses, logits, updates.get("batch_stats", {}))

  grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    state = state.replace(ema=optax.incremental_update(
        {"params": state.params, "batch_stats": state.batch_stats}, state.ema,
        step_size=1.0 - ema_decay))

  loss_sum = losses.sum()
  step_metrics = {
      "loss_sum": loss_sum,
      "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
      "count": jnp.asarray(labels.shape[0], jnp.int32),
      # Remembers the first step whose loss was NaN/Inf (min-reduced).
      "bad_step_min": jnp.where(jnp.isfinite(loss_sum), metrics_lib.NO_BAD_STEP,
                                state.step - 1).astype(jnp.int32),
  }
  if axis_name is not None:
    step_metrics = {k: (jax.lax.pmin(v, axis_name) if k.endswith("_min")
                        else jax.lax.psum(v, axis_name)) for k, v in step_metrics.items()}
  return state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, num_classes: int,
              tta: str = "none", use_ema: bool = False, axis_name: str | None = None
              ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Sums of loss, correct and a confusion matrix over the unmasked examples of
  {'image', 'label', 'mask'}, and per example the predicted class and loss.
  With test-time augmentation the class probabilities of all views are
  averaged."""
  weights = state.ema if use_ema else {"params": state.params,
                                       "batch_stats": state.batch_stats}
  views = augment.tta_views(_to_unit_float(batch["image"]), tta)
  log_probs = [jax.nn.log_softmax(state.apply_fn(weights, normalize(v), train=False)
                                  .astype(jnp.float32)) for v in views]
  log_probs = jax.nn.logsumexp(jnp.stack(log_probs), axis=0) - jnp.log(len(views))
  labels, mask = batch["label"], batch["mask"]
  predictions = jnp.argmax(log_probs, -1)
  losses = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  confusion = jnp.einsum("bi,bj->ij", jax.nn.one_hot(labels, num_classes) * mask[:, None],
                         jax.nn.one_hot(predictions, num_classes))
  step_metrics = {"loss_sum": jnp.sum(losses * mask),
                  "correct": jnp.sum((predictions == labels) * mask),
                  "count": jnp.sum(mask),
                  "confusion": confusion}
  if axis_name is not None:
    step_metrics = jax.lax.psum(step_metrics, axis_name)
  return step_metrics, {"prediction": predictions, "loss": losses}


# ---- evaluation over a whole split ---------------------------------------------
class Evaluator:
  """Evaluates a split exactly: every example once, the last batch padded.

  `data` reuses a split already on the devices (the train split, for
  hard-example mining) instead of copying it again.
  """

  def __init__(self, config: ml_collections.ConfigDict, par: parallel_lib.DataParallel,
               split: input_pipeline.ArraySplit, state: Any, use_ema: bool = False,
               tta: str | None = None, data: dict[str, jax.Array] | None = None):
    par.check_batch_size(config.eval_batch_size, "eval_batch_size")
    self.par = par
    self.split = split
    self.batch_size = min(config.eval_batch_size,
                          -(-len(split) // par.num_devices) * par.num_devices)
    self.indices, self.mask = input_pipeline.eval_index_plan(len(split), self.batch_size)
    self.data = data if data is not None else par.put_dataset(
        {"image": split.images, "label": split.labels})
    self._gather = par.make_gather()
    step = functools.partial(eval_step, num_classes=config.dataset.num_classes,
                             tta=config.tta if tta is None else tta, use_ema=use_ema,
                             axis_name=par.axis_name)
    self._step, self.compile_s = par.compile_eval(step, state, self._batch(0))

  def _batch(self, i: int) -> dict[str, jax.Array]:
    batch = self._gather(self.data, self.indices[i])
    batch["mask"] = self.par.put_batch({"mask": self.mask[i]})["mask"]
    return batch

  def run(self, state: Any, per_example: bool = False
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Returns the summed metrics and, if asked, every example's prediction
    and loss (in split order, padding removed)."""
    acc = metrics_lib.Accumulator()
    outputs = []
    for i in range(len(self.indices)):
      step_metrics, batch_outputs = self._step(state, self._batch(i))
      acc.add(step_metrics)
      if per_example:
        outputs.append(batch_outputs)
    sums = acc.fetch()
    if not per_example:
      return sums, None
    keep = self.mask.reshape(-1) > 0
    return sums, {k: np.concatenate([np.asarray(o[k]) for o in outputs])[keep]
                  for k in outputs[0]}


# ---- the loop --------------------------------------------------------------------
def config_errors(config: ml_collections.ConfigDict, num_devices: int | None = None
                  ) -> list[str]:
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
  check(isinstance(config.num_epochs, int) and config.num_epochs > 0, "num_epochs",
        "a positive integer")
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint.every_epochs",
              "checkpoint.max_to_keep"):
    check(isinstance(number(key), int) and number(key) > 0, key, "a positive integer")
  if num_devices is not None:
    for key in ("batch_size", "eval_batch_size"):
      value = number(key)
      if isinstance(value, int) and value > 0:
        error = parallel_lib.batch_size_error(value, num_devices, key)
        if error:
          errors.append(error)
  check(isinstance(config.eval_every_epochs, int) and config.eval_every_epochs >= 0,
        "eval_every_epochs", ">= 0 (0: only after the last epoch)")
  check(number("optimizer.learning_rate") > 0, "optimizer.learning_rate", "> 0")
  if config.optimizer.name == "muon":
    check(number("optimizer.muon_learning_rate") > 0, "optimizer.muon_learning_rate", "> 0")
    check(0 <= number("optimizer.muon_momentum") < 1, "optimizer.muon_momentum", "in [0, 1)")
  for key in ("optimizer.momentum", "optimizer.b1", "optimizer.b2", "ema_decay",
              "label_smoothing"):
    check(0 <= number(key) < 1, key, "in [0, 1)")
  for key in ("optimizer.weight_decay", "optimizer.grad_clip_norm", "schedule.warmup_epochs",
              "optimizer.lr_base_batch_size", "schedule.end_lr_factor"):
    check(number(key) >= 0, key, ">= 0")
  check(number("optimizer.eps") > 0, "optimizer.eps", "> 0")
  check(number("optimizer.norm_lr_multiplier") >= 0, "optimizer.norm_lr_multiplier", ">= 0")
  check(0 <= number("schedule.pct_start") < 1, "schedule.pct_start", "in [0, 1)")
  check(number("schedule.div_factor") > 0, "schedule.div_factor", "> 0")
  check(number("schedule.final_div_factor") > 0, "schedule.final_div_factor", "> 0")
  check(0 < number("schedule.decay_factor") <= 1, "schedule.decay_factor", "in (0, 1]")
  if config.hard_mining.enabled:
    check(isinstance(number("hard_mining.start_epoch"), int) and
          number("hard_mining.start_epoch") >= 0, "hard_mining.start_epoch", ">= 0")
    check(number("hard_mining.power") >= 0, "hard_mining.power", ">= 0")
    check(0 <= number("hard_mining.uniform_fraction") <= 1, "hard_mining.uniform_fraction",
          "in [0, 1]")
  check(isinstance(config.dataset.train_split, str) and config.dataset.train_split.strip(),
        "dataset.train_split", "a tfds split such as 'train[:45000]'")
  try:
    ops = augment.parse(config.augment)
  except ValueError as e:
    errors.append(str(e))
  else:
    if config.alternating_flip and any(name == "flip" for name, _ in ops):
      errors.append("config.alternating_flip replaces the random flip: remove 'flip' "
                    f"from --config.augment ({config.augment!r}).")
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
  return errors


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Fails fast, before any data or compilation, with every key to fix."""
  errors = config_errors(config, num_devices)
  if len(errors) == 1:
    raise ValueError(errors[0])
  if errors:
    raise ValueError(f"{len(errors)} problems with the config:\n  " + "\n  ".join(errors))


def setup_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Turns on JAX's persistent compilation cache unless disabled with ""."""
  if config.compilation_cache_dir:
    path = Path(config.compilation_cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


class _StopRequest:
  """First Ctrl-C asks the loop to stop after the current step (the state is
  then checkpointed); a second one interrupts at once."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGINT, self._handle)
    except ValueError:  # Not the main thread: no handler, nothing to restore.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("\nInterrupted: saving a checkpoint after this step "
          "(press Ctrl-C again to abort without saving).", file=sys.stderr)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
    return False


def _progress(total: int, initial: int, desc: str):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
              dynamic_ncols=True, disable=not sys.stderr.isatty())


def model_meta(config: ml_collections.ConfigDict, params: Any) -> dict[str, Any]:
  """Identifies the model a checkpoint belongs to."""
  return {"model": config.model.name, "model_options": config.model.to_dict(),
          "param_count": count_params(params)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       *, train_split: input_pipeline.ArraySplit | None = None,
                       eval_split: input_pipeline.ArraySplit | None = None,
                       stop_after_steps: int | None = None,
                       epoch_callback: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
  """Trains `config` into `workdir`, resuming from its latest checkpoint.

  Writes config.json, metrics.jsonl (one record per epoch), TensorBoard
  events and checkpoints. Returns the last epoch's record. Passing
  `train_split` (and optionally `eval_split`; None then skips evaluation)
  bypasses loading, for tests and the search; `stop_after_steps`
  stops like Ctrl-C after that many total steps (for tests of resuming).
  `epoch_callback(record)` is called after each epoch's record (and checkpoint,
  if one is due) is written; the search reports to Ray Tune with it, and stops
  trials early by raising from it.

  One run at a time per workdir (`workdir.RunLock`); config.json is written
  only once the workdir's checkpoint (if any) is known to fit this config.
  """
  validate_config(config, jax.device_count())
  par = parallel_lib.DataParallel(config.parallel)
  compute = choose_compute(config, par)  # before the data: it may refuse the run
  setup_compilation_cache(config)
  workdir = Path(workdir)
  with workdir_lib.RunLock(workdir):
    return _train_and_evaluate(config, workdir, par, compute, train_split, eval_split,
                               stop_after_steps, epoch_callback)


def _train_and_evaluate(config, workdir: Path, par: parallel_lib.DataParallel,
                        compute: precision.Compute, train_split, eval_split,
                        stop_after_steps, epoch_callback) -> dict[str, Any]:
  if train_split is None:  # else the caller supplies both; no eval_split: no eval
    train_split = input_pipeline.load_split(config.dataset.name, config.dataset.train_split,
                                            config.dataset.data_dir, key="dataset.train_split")
    if config.dataset.eval_split:
      eval_split = input_pipeline.load_split(config.dataset.name, config.dataset.eval_split,
                                             config.dataset.data_dir, key="dataset.eval_split")
  steps_in_epoch = optim.steps_per_epoch(len(train_split), config.batch_size)

  model = create_model(config, compute, par.axis_name)
  tx, learning_rate_fn = optim.create_optimizer(config, steps_in_epoch)
  # A restored checkpoint overwrites the data init's work; it costs ~1 s.
  state = create_train_state(config, model, tx,
                             init_images=train_split.images[:DATA_INIT_IMAGES])
  meta = model_meta(config, state.params)
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                 keep_best=config.checkpoint.keep_best, meta=meta)
  restored = ckpt.restore(state, "latest")
  partial_epoch = None
  if restored is not None:
    state, restored_meta = restored
    logging.info("Resuming from step %d in %s", int(state.step), workdir)
    partial_epoch = restored_meta.get("partial_epoch")
  # Only now is the workdir known to hold nothing this config cannot resume.
  workdir_lib.write_atomically(workdir / "config.json",
                               config.to_json_best_effort(indent=2) + "\n")
  step = int(state.step)
  writers.truncate_metrics(workdir, step)
  base_rng = np.asarray(state.rng)
  state = par.replicate(state)

  train_data = par.put_dataset({"image": train_split.images, "label": train_split.labels})
  gather = par.make_gather()
  step_fn = functools.partial(
      train_step, augment_fn=augment.build(config.augment),
      num_classes=config.dataset.num_classes, label_smoothing=config.label_smoothing,
      ema_decay=config.ema_decay, axis_name=par.axis_name)
  example_rng = jax.random.fold_in(base_rng, 0)
  p_train_step, compile_s = par.compile_train(
      step_fn, state, gather(train_data, np.zeros(config.batch_size, np.int32)), example_rng)
  evaluators = []
  if eval_split is not None:
    evaluators.append(("eval", Evaluator(config, par, eval_split, state)))
    if config.ema_decay:
      evaluators.append(("ema_eval", Evaluator(config, par, eval_split, state, use_ema=True)))
  compile_s += sum(e.compile_s for _, e in evaluators)
  if config.hard_mining.enabled:  # measures every training example's loss
    train_loss_evaluator = Evaluator(config, par, train_split, state, tta="none",
                                     data=train_data)
    compile_s += train_loss_evaluator.compile_s
  print(f"{config.model.name}: {meta['param_count']:,} parameters, {par.num_devices} "
        f"device(s) ({par.mode}), {compute.dtype_name}, {compute.conv_backend} convolutions, "
        f"{steps_in_epoch} steps/epoch, "
        f"compiled in {compile_s:.1f}s",
        file=sys.stderr)

  if step >= steps_in_epoch * config.num_epochs:
    print(f"{workdir} already holds a run trained for {config.num_epochs} epochs; "
          "raise --config.num_epochs to train on, or evaluate it with --mode=eval.",
          file=sys.stderr)
  writer = writers.MetricWriter(workdir, config)
  record: dict[str, Any] = {}
  stop = _StopRequest()
  try:
    with stop:
      start_epoch = step // steps_in_epoch
      for epoch in range(start_epoch, config.num_epochs):
        weights = None
        if config.hard_mining.enabled and epoch >= config.hard_mining.start_epoch:
          losses = train_loss_evaluator.run(state, per_example=True)[1]["loss"]
          weights = input_pipeline.mining_weights(losses, config.hard_mining.power,
                                                  config.hard_mining.uniform_fraction)
        plan = input_pipeline.train_index_plan(len(train_split), config.batch_size,
                                               config.seed, epoch, weights)
        flips = (input_pipeline.alternating_flips(plan, len(train_split), config.seed, epoch)
                 if config.alternating_flip else None)
        acc = metrics_lib.Accumulator()
        resumed_mid_epoch = step > epoch * steps_in_epoch
        if resumed_mid_epoch and partial_epoch is not None:
          acc.add(metrics_lib.from_host(partial_epoch))  # the steps before the stop
        partial_epoch = None
        start = time.perf_counter()
        first_step = step
        with _progress(steps_in_epoch, step - epoch * steps_in_epoch,
                       f"epoch {epoch + 1}/{config.num_epochs}") as bar:
          for row in range(step - epoch * steps_in_epoch, steps_in_epoch):
            batch = gather(train_data, plan[row], None if flips is None else flips[row])
            state, step_metrics = p_train_step(state, batch, jax.random.fold_in(base_rng, step))
            acc.add(step_metrics)
            step += 1
            bar.update()
            if step % config.log_every_steps == 0:
              sums = acc.fetch()
              metrics_lib.check_finite(sums, epoch + 1)
              seen = (step - first_step) * config.batch_size
              bar.set_postfix(loss=f"{metrics_lib.means(sums)['loss']:.3f}",
                              img_s=f"{seen / (time.perf_counter() - start):.0f}")
            if stop.requested or step == stop_after_steps:
              break
        sums = acc.fetch()
        metrics_lib.check_finite(sums, epoch + 1)
        stopping = stop.requested or step == stop_after_steps
        if stopping and step < (epoch + 1) * steps_in_epoch:
          # The sums so far go with the checkpoint: the resumed epoch's record
          # then covers all of its steps.
          ckpt.save(step, par.unreplicate(state), partial_epoch=metrics_lib.to_host(sums))
          _say_stopped(step, workdir)
          break
        epoch_time = time.perf_counter() - start
        train_means = metrics_lib.means(sums)
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": train_means["loss"], "train_accuracy": train_means["accuracy"],
                  "learning_rate": float(learning_rate_fn(step - 1)),
                  "epoch_time_s": epoch_time,
                  "train_img_per_s": (step - first_step) * config.batch_size / epoch_time}
        if epoch == start_epoch:
          record["compile_s"] = compile_s
        last = epoch + 1 == config.num_epochs
        periodic = config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0
        if evaluators and (periodic or last):
          for prefix, evaluator in evaluators:
            eval_means = metrics_lib.means(evaluator.run(state)[0])
            record[f"{prefix}_loss"] = eval_means["loss"]
            record[f"{prefix}_accuracy"] = eval_means["accuracy"]
        writer.write_epoch(record)
        print(_format_record(record), file=sys.stderr)
        if (epoch + 1) % config.checkpoint.every_epochs == 0 or last or stopping:
          ckpt.save(step, par.unreplicate(state), record)
        if epoch_callback is not None:
          epoch_callback(dict(record))
        if stopping and not last:
          _say_stopped(step, workdir)
          break
  finally:
    writer.close()
    ckpt.wait()
    ckpt.close()
  return record


def _say_stopped(step: int, workdir: Path) -> None:
  print(f"Stopped at step {step}; checkpoint saved in {workdir}. Run the same "
        "command again to resume.", file=sys.stderr)


def _format_record(record: dict[str, Any]) -> str:
  parts = [f"epoch {record['epoch']}", f"step {record['step']}"]
  for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy",
              "ema_eval_accuracy", "learning_rate", "train_img_per_s"):
    if key in record:
      parts.append(f"{key} {record[key]:.4g}")
  return " | ".join(parts)

