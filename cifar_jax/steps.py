"""The train state and the pure steps: one optimizer step, one evaluation batch.

`train_step(state, batch, rng) -> (state, metrics)`,
`eval_step(state, batch) -> (metrics, per_example)` and the data filter's
`proxy_step(state, batch, rng) -> (state, keep)` are module-level pure
functions; `run.build_run` binds their options from the config and
`parallel.DataParallel` compiles them once for jit or pmap. Batches carry
uint8 images: augmentation and normalisation happen inside the step, on the
device. Metrics are sums (see metrics.py), fetched to the host only when logged.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cifar_jax import augment
from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from flax) plus BatchNorm statistics,
  the base PRNG key of the run and the EMA weights ({} when EMA is off)."""

  batch_stats: Any = None
  rng: jax.Array = None
  ema: Any = None


def normalize(images: jax.Array) -> jax.Array:
  """[0, 1] images -> per-channel standardised with the CIFAR-10 statistics."""
  mean = jnp.asarray(input_pipeline.CIFAR10_MEAN, images.dtype)
  std = jnp.asarray(input_pipeline.CIFAR10_STD, images.dtype)
  return (images - mean) / std


def model_inputs(images: jax.Array) -> jax.Array:
  """uint8 images as the models take them: float, normalised."""
  return normalize(to_unit_float(images))


def to_unit_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0


def training_inputs(
  rng: jax.Array,
  batch: dict[str, jax.Array],
  *,
  augment_fn: augment.Augment,
  num_classes: int,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """A uint8 batch -> (augmented, normalised images; soft targets)."""
  images, targets = augment_fn(
    rng, to_unit_float(batch["image"]), jax.nn.one_hot(batch["label"], num_classes)
  )
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return normalize(images), targets


def _step_inputs(rng, batch, augment_fn, num_classes, label_smoothing, axis_name):
  """A train step's augmented inputs and dropout key from its step key. Under
  pmap each device folds in its index, to augment and drop out differently."""
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  aug_rng, dropout_rng = jax.random.split(rng)
  images, targets = training_inputs(
    aug_rng, batch, augment_fn=augment_fn, num_classes=num_classes, label_smoothing=label_smoothing
  )
  return images, targets, dropout_rng


def _train_mode_losses(state, params, images, targets, dropout_rng):
  """Per-example losses, logits and updated BatchNorm statistics of `params`."""
  logits, updates = state.apply_fn(
    {"params": params, "batch_stats": state.batch_stats},
    images,
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": dropout_rng},
  )
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  return losses, logits, updates.get("batch_stats", {})


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  augment_fn: augment.Augment,
  num_classes: int,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
  lookahead_every: int = 0,
  lookahead_decay_fn: Callable[[jax.Array], jax.Array] | None = None,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch {'image': uint8 (B,H,W,C), 'label': (B,)}.

  A batch may also hold 'keep' (data filtering, see data_filter.py): the rows
  that `proxy_step` kept. The whole batch is augmented first, with the same
  key as the proxy's step, so the rows trained on are exactly the images the
  proxy scored.

  With `ema_decay`, `state.ema` follows the weights (and BatchNorm
  statistics) as an exponential moving average. With `lookahead_every`
  (airbench94's lookahead), every that many steps `state.ema` (the slow
  weights) moves towards the weights by 1 - `lookahead_decay_fn(step)`, and
  the weights jump back to it; the slow weights are what is evaluated as
  `ema_eval_*`, as airbench's last sync hands them to its evaluation.

  Under pmap (`axis_name` set) gradients and metrics are reduced over devices;
  each device folds its index into the shared step key for its own random
  augmentation and dropout.
  """
  images, targets, dropout_rng = _step_inputs(
    rng, batch, augment_fn, num_classes, label_smoothing, axis_name
  )
  labels = batch["label"]
  if "keep" in batch:
    images, targets, labels = (select_rows(x, batch["keep"]) for x in (images, targets, labels))

  def loss_fn(params):
    losses, logits, batch_stats = _train_mode_losses(state, params, images, targets, dropout_rng)
    return losses.mean(), (losses, logits, batch_stats)

  grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    state = state.replace(
      ema=optax.incremental_update(
        {"params": state.params, "batch_stats": state.batch_stats},
        state.ema,
        step_size=1.0 - ema_decay,
      )
    )
  if lookahead_every:
    state = _lookahead_sync(state, lookahead_every, lookahead_decay_fn)

  loss_sum = losses.sum()
  step_metrics = {
    "loss_sum": loss_sum,
    "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
    "count": jnp.asarray(labels.shape[0], jnp.int32),
    "first_bad_step": jnp.where(
      jnp.isfinite(loss_sum), metrics_lib.NO_BAD_STEP, state.step - 1
    ).astype(jnp.int32),
  }
  if axis_name is not None:
    step_metrics = metrics_lib.reduce_over_devices(step_metrics, axis_name)
  return state, step_metrics


def select_rows(x: jax.Array, keep: jax.Array) -> jax.Array:
  """The rows `keep` of a batch `x`. `keep` is (k,) rows of this device's
  batch under pmap, or (parts, k) rows of each of `parts` equal consecutive
  parts of the global batch under jit (each device's share, see `proxy_step`)."""
  if keep.ndim == 1:
    return x[keep]
  parts = keep.shape[0]
  offsets = jnp.arange(parts, dtype=keep.dtype)[:, None] * (x.shape[0] // parts)
  return x[(keep + offsets).reshape(-1)]


def proxy_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  keep_per_part: int,
  parts: int,
  train_every: int,
  augment_fn: augment.Augment,
  num_classes: int,
  label_smoothing: float = 0.0,
  axis_name: str | None = None,
) -> tuple[TrainState, jax.Array]:
  """The data filter's proxy on one batch: which rows a main step trains on.

  Augments the batch exactly as `train_step` does with the same `rng`, runs
  the proxy in train mode, and keeps the `keep_per_part` examples of highest
  loss in each of `parts` equal consecutive parts of the batch (one part per
  device, so that every device trains on as many rows; under pmap the batch
  is already one device's part). On every `train_every`-th step (`state.step`
  counts them all) it also takes an optimizer step on the mean loss of the
  kept examples, as airbench96_faster's proxy: its optimizer is sized in
  those updates (`run.build_run(updates_every=)`). Returns the state and
  `keep`, (parts, keep_per_part) row indices within each part.
  """
  images, targets, dropout_rng = _step_inputs(
    rng, batch, augment_fn, num_classes, label_smoothing, axis_name
  )

  def loss_fn(params):
    losses, _, batch_stats = _train_mode_losses(state, params, images, targets, dropout_rng)
    scores = jax.lax.stop_gradient(losses).reshape(parts, -1)
    keep = jax.lax.top_k(scores, keep_per_part)[1].astype(jnp.int32)
    return select_rows(losses, keep).mean(), (keep, batch_stats)

  def update(state):
    grads, (keep, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), keep

  def score(state):
    _, (keep, batch_stats) = loss_fn(state.params)
    return state.replace(step=state.step + 1, batch_stats=batch_stats), keep

  return jax.lax.cond(state.step % train_every == 0, update, score, state)


def _lookahead_sync(
  state: TrainState, every: int, decay_fn: Callable[[jax.Array], jax.Array]
) -> TrainState:
  fast = {"params": state.params, "batch_stats": state.batch_stats}
  synced = optax.incremental_update(fast, state.ema, step_size=1.0 - decay_fn(state.step))
  due = state.step % every == 0  # state.step counts the steps done, this one included
  slow = jax.tree.map(lambda s, old: jnp.where(due, s, old), synced, state.ema)
  fast = jax.tree.map(lambda s, f: jnp.where(due, s, f), slow, fast)
  return state.replace(params=fast["params"], batch_stats=fast["batch_stats"], ema=slow)


def eval_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  num_classes: int,
  tta: str = "none",
  use_ema: bool = False,
  axis_name: str | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Sums of loss, correct and a confusion matrix over the unmasked examples of
  {'image', 'label', 'mask'}, and per example the predicted class and loss.
  With test-time augmentation the class probabilities of all views are
  averaged."""
  weights = state.ema if use_ema else {"params": state.params, "batch_stats": state.batch_stats}
  views = augment.tta_views(to_unit_float(batch["image"]), tta)
  log_probs = [
    jax.nn.log_softmax(state.apply_fn(weights, normalize(v), train=False).astype(jnp.float32))
    for v in views
  ]
  log_probs = jax.nn.logsumexp(jnp.stack(log_probs), axis=0) - jnp.log(len(views))
  labels, mask = batch["label"], batch["mask"]
  predictions = jnp.argmax(log_probs, -1)
  losses = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  confusion = jnp.einsum(
    "bi,bj->ij",
    jax.nn.one_hot(labels, num_classes) * mask[:, None],
    jax.nn.one_hot(predictions, num_classes),
  )
  step_metrics = {
    "loss_sum": jnp.sum(losses * mask),
    "correct": jnp.sum((predictions == labels) * mask),
    "count": jnp.sum(mask),
    "confusion": confusion,
  }
  if axis_name is not None:
    step_metrics = metrics_lib.reduce_over_devices(step_metrics, axis_name)
  return step_metrics, {"prediction": predictions, "loss": losses}
