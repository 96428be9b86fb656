"""Optimizers, learning-rate schedules and weight-decay masks (optax).

Durations in configs are epochs; `steps_per_epoch`, `epochs_to_steps`,
`total_steps` and `pass_steps` are the one place that turns them into
optimizer steps.
"""

from __future__ import annotations

import re
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training drops the last partial batch of each epoch's permutation."""
  return max(num_examples // batch_size, 1)


def epochs_to_steps(epochs: float, steps_in_epoch: float) -> int:
  return int(round(epochs * steps_in_epoch))


def total_steps(config: ml_collections.ConfigDict, steps_in_epoch: float) -> int:
  """The run's length in steps: `num_epochs` epochs, at least one step.

  `num_epochs` may be fractional (airbench94 trains 9.9 epochs): the last
  pass over the data then stops part-way, and every schedule ends there."""
  return max(epochs_to_steps(config.num_epochs, steps_in_epoch), 1)


def pass_steps(config: ml_collections.ConfigDict, steps_in_epoch: int) -> list[int]:
  """The steps of each pass over the data that `total_steps` takes:
  `steps_in_epoch` each, the last one cut short when `num_epochs` is fractional."""
  full, rest = divmod(total_steps(config, steps_in_epoch), steps_in_epoch)
  return [steps_in_epoch] * full + ([rest] if rest else [])


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`optimizer.learning_rate`, linearly scaled with the batch size when
  `optimizer.lr_base_batch_size` is set (Goyal et al., 2017)."""
  lr = config.optimizer.learning_rate
  if config.optimizer.lr_base_batch_size:
    lr *= config.batch_size / config.optimizer.lr_base_batch_size
  return lr


def create_learning_rate_fn(
  config: ml_collections.ConfigDict, steps_in_epoch: float
) -> optax.Schedule:
  s = config.schedule
  peak = peak_learning_rate(config)
  total = total_steps(config, steps_in_epoch)
  warmup = min(epochs_to_steps(s.warmup_epochs, steps_in_epoch), total - 1)
  if s.name == "onecycle":
    return optax.cosine_onecycle_schedule(
      total,
      peak,
      pct_start=s.pct_start,
      div_factor=s.div_factor,
      final_div_factor=s.final_div_factor,
    )
  if s.name == "linear_onecycle":
    # airbench's triangle: linear from peak / div_factor up to peak over the
    # first pct_start of the steps, then linear down to end_lr_factor * peak.
    rise = min(max(int(round(s.pct_start * total)), 1), total - 1)
    return optax.join_schedules(
      [
        optax.linear_schedule(peak / s.div_factor, peak, rise),
        optax.linear_schedule(peak, s.end_lr_factor * peak, total - rise),
      ],
      [rise],
    )
  if s.name == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps=warmup, decay_steps=total, end_value=s.end_lr_factor * peak
    )
  if s.name == "constant":
    main = optax.constant_schedule(peak)
  elif s.name == "piecewise":
    boundaries = {
      epochs_to_steps(e, steps_in_epoch) - warmup: s.decay_factor for e in s.boundaries_epochs
    }
    main = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise ValueError(
      f"Unknown schedule.name {s.name!r}; choose constant, cosine, "
      "onecycle, linear_onecycle or piecewise."
    )
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


# Learned embeddings and bias tables that, like norms and biases, are not decayed
# (as in the ViT/Swin reference training code).
NO_DECAY_NAMES = frozenset({"cls_token", "pos_embedding", "relative_position_bias_table"})


def lookahead_decay_fn(
  config: ml_collections.ConfigDict, steps_in_epoch: int
) -> Callable[[jax.Array], jax.Array]:
  """airbench94's lookahead decay at step `count` (steps done): ramping as
  (count / total)^3 from 0 to `lookahead.decay` at the last step, so the
  weights move freely early and are averaged strongly at the end."""
  total = total_steps(config, steps_in_epoch)
  peak = config.lookahead.decay if "lookahead" in config else 0.0
  return lambda count: peak * (count.astype(jnp.float32) / total) ** 3


def decay_mask(params: Any, decay_norm_and_bias: bool) -> Any:
  """True for parameters that weight decay applies to: kernels. BatchNorm and
  LayerNorm scales, all biases (1-D), position embeddings, class tokens and
  relative-position bias tables are left out unless `decay_norm_and_bias`."""

  def decays(path, p):
    name = getattr(path[-1], "key", None)
    return decay_norm_and_bias or (p.ndim > 1 and name not in NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decays, params)


def param_name(path) -> str:
  """A parameter's tree path as 'module/.../name', e.g. 'whiten/bias'."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def path_mask(params: Any, pattern: str) -> Any:
  """True for the parameters whose `param_name` matches the regex `pattern`
  (re.search; '' matches nothing)."""
  regex = re.compile(pattern) if pattern else None
  return jax.tree_util.tree_map_with_path(
    lambda path, _: bool(regex and regex.search(param_name(path))), params
  )


def norm_mask(params: Any, extra: str = "") -> Any:
  """True for parameters of normalisation layers: those with a module on their
  path whose name contains 'norm' (BatchNorm_0, LayerNorm_1, norm1, ...),
  and for those matching the regex `extra`."""

  def in_norm(path, _):
    return any("norm" in str(getattr(k, "key", "")).lower() for k in path[:-1])

  norms = jax.tree_util.tree_map_with_path(in_norm, params)
  return jax.tree.map(lambda a, b: a or b, norms, path_mask(params, extra))


def freeze_after(
  num_steps: int, learning_rate: optax.Schedule | None = None, peak: float | None = None
) -> optax.GradientTransformation:
  """Passes updates through for the first `num_steps` steps, then zeroes
  them: the parameters stop where they are (airbench's whitening bias, which
  trains for 3 epochs). Chained last, so weight decay stops too, as for a
  PyTorch parameter with requires_grad=False.

  With the run's `learning_rate` schedule and its `peak` given, the updates
  are rescaled so that these parameters' rate falls linearly from `peak` to 0
  at `num_steps` instead of following the schedule (airbench94_muon's
  whitening bias: its group's initial lr * (1 - step / 3 epochs)). From the
  peak, not the schedule's first value, so that a warm-up from 0 does not
  freeze them from the start. Scaling the finished update is
  scaling that step's lr, momentum and decay included, as PyTorch's SGD does.
  """
  if (learning_rate is None) != (peak is None):
    raise ValueError("freeze_after: a linear ramp needs both learning_rate and peak.")
  if learning_rate is None:
    return optax.scale_by_schedule(lambda count: jnp.where(count < num_steps, 1.0, 0.0))

  def factor(count):
    ramp = peak * (1.0 - count / max(num_steps, 1))
    current = learning_rate(count)
    return jnp.where(
      (count < num_steps) & (current > 0), ramp / jnp.where(current > 0, current, 1.0), 0.0
    )

  return optax.scale_by_schedule(factor)


# A convolution kernel (HWIO) as the matrix Muon orthogonalises: (H*W*I) x O.
CONV_KERNEL_MATRIX = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)


def fixed_kernel_norm(eps: float = 1e-12) -> optax.GradientTransformation:
  """Adds to each update the change that first rescales its kernel to the
  Frobenius norm sqrt(output channels), as airbench94_muon does before every
  Muon step. A convolution followed by BatchNorm computes the same function
  at any kernel scale; pinning the scale pins the effective step size of the
  orthogonalised (unit-spectral-norm) updates."""

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError("fixed_kernel_norm needs the params.")

    def rescale(update, p):
      target = jnp.sqrt(jnp.asarray(p.shape[-1], p.dtype))
      return update + p * (target / (jnp.linalg.norm(p) + eps) - 1.0)

    return jax.tree.map(rescale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def muon_for_kernels(
  learning_rate: optax.ScalarOrSchedule, momentum: float, ns_steps: int, fixed_norm: bool
) -> optax.GradientTransformation:
  """Muon (Jordan et al., 2024) for 4-D convolution kernels: Nesterov momentum,
  its (H*W*I) x O matrix orthogonalised by `ns_steps` Newton-Schulz
  iterations (optax's), times the learning rate; with `fixed_norm`, each
  kernel is also held at norm sqrt(O) (`fixed_kernel_norm`). No weight decay:
  with the norm fixed it would do nothing."""
  every_kernel = lambda tree: jax.tree.map(lambda _: CONV_KERNEL_MATRIX, tree)  # noqa: E731
  parts = [
    optax.contrib.scale_by_muon(
      ns_steps=ns_steps, beta=momentum, nesterov=True, weight_dimension_numbers=every_kernel
    ),
    optax.scale_by_learning_rate(learning_rate),
  ]
  if fixed_norm:
    parts.append(fixed_kernel_norm())
  return optax.chain(*parts)


def create_optimizer(
  config: ml_collections.ConfigDict, steps_in_epoch: float
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns the optimizer and its learning-rate schedule.

  SGD and Adam use coupled L2 decay (added to the gradient, as PyTorch's
  `weight_decay` does); AdamW, LARS and LAMB decouple it. With SGD,
  `norm_lr_multiplier` scales the gradients of normalisation-layer parameters
  before the decay is added: their learning rate, not their weight decay
  (airbench's `bias_scaler`). "muon" trains convolution kernels with Muon
  (see `muon_for_kernels`) and every other parameter with that same SGD.
  """
  o = config.optimizer
  lr = create_learning_rate_fn(config, steps_in_epoch)
  mask = lambda params: decay_mask(params, o.decay_norm_and_bias)  # noqa: E731
  if o.norm_lr_multiplier != 1.0 and o.name not in ("sgd", "muon"):
    raise ValueError(
      "optimizer.norm_lr_multiplier is only supported with "
      f"optimizer.name='sgd' or 'muon', not {o.name!r}."
    )
  if o.name in ("sgd", "muon"):
    tx = optax.chain(
      optax.add_decayed_weights(o.weight_decay, mask),
      optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov),
    )
    if o.norm_lr_multiplier != 1.0:  # else unchanged, so old checkpoints restore
      norms = lambda params: norm_mask(params, o.get("norm_lr_extra_params", ""))  # noqa: E731
      tx = optax.chain(optax.masked(optax.scale(o.norm_lr_multiplier), norms), tx)
    if o.name == "muon":
      muon_lr = lambda step: lr(step) * (o.muon_learning_rate / peak_learning_rate(config))  # noqa: E731
      tx = optax.partition(
        {
          "muon": muon_for_kernels(muon_lr, o.muon_momentum, o.muon_ns_steps, o.muon_fixed_norm),
          "sgd": tx,
        },
        lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 4 else "sgd", params),
      )
  elif o.name == "adam":
    tx = optax.chain(
      optax.add_decayed_weights(o.weight_decay, mask), optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
    )
  elif o.name == "adamw":
    tx = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
  elif o.name == "lars":
    tx = optax.lars(
      lr,
      weight_decay=o.weight_decay,
      weight_decay_mask=mask,
      trust_ratio_mask=mask,
      momentum=o.momentum,
      nesterov=o.nesterov,
    )
  elif o.name == "lamb":
    tx = optax.lamb(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
  else:
    raise ValueError(
      f"Unknown optimizer.name {o.name!r}; choose sgd, muon, adam, adamw, lars or lamb."
    )
  if o.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  if o.get("freeze_params"):  # else unchanged, so old checkpoints restore
    frozen = lambda params: path_mask(params, o.freeze_params)  # noqa: E731
    num_steps = epochs_to_steps(o.freeze_after_epochs, steps_in_epoch)
    ramp = o.get("freeze_lr", "schedule") == "linear"
    ramp_args = (lr, peak_learning_rate(config)) if ramp else ()
    tx = optax.chain(tx, optax.masked(freeze_after(num_steps, *ramp_args), frozen))
  return tx, lr
