"""Building blocks shared by several model families: the convolution and
attention implementations a model is given, norm, activations, conv-norm-act
units, stochastic depth, pooling and the transformer MLP."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# How a model computes its convolutions is an input of the model, never
# process state: every registered model takes a `conv_general_dilated` field
# (a function with `lax.conv_general_dilated`'s signature, XLA's by default;
# `cifar_jax.cpu_conv` has the oneDNN ones) and hands its blocks an nn.Conv
# bound to it, as flax's ResNet example takes `conv=`.
ConvFn = Callable[..., jax.Array]
ModuleDef = Any  # a Module class or a functools.partial of one
xla_conv: ConvFn = lax.conv_general_dilated


# Attention and dense-layer products likewise: the transformers take an
# `attention` field with `xla_attention`'s signature and a `dot_general` field
# with `lax.dot_general`'s (`cifar_jax.cpu_attention` and `cifar_jax.cpu_matmul`
# have the oneDNN ones).
AttentionFn = Callable[..., jax.Array]
DotFn = Callable[..., jax.Array]
xla_dot: DotFn = lax.dot_general


def xla_attention(
  qkv: jax.Array,
  bias: jax.Array | None,
  *,
  scale: float,
  weights_dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """Multi-head scaled dot-product attention of the fused projection `qkv`
  (batch, tokens, 3, heads, head_dim) -> (batch, tokens, heads, head_dim).

  The logits are `scale * q k^T`, in float32, plus `bias[b % nb]` for batch
  entry b when `bias` (nb, heads, tokens, tokens) is given (Swin's
  relative-position bias and window mask); their softmax is cast back to
  `qkv`'s dtype and passed through `weights_dropout` when given.
  """
  b, n, _, h, _ = qkv.shape
  q, k, v = qkv[:, :, 0] * scale, qkv[:, :, 1], qkv[:, :, 2]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if bias is not None:
    nb = bias.shape[0]
    logits = (logits.reshape(b // nb, nb, h, n, n) + bias).reshape(b, h, n, n)
  weights = nn.softmax(logits, axis=-1).astype(qkv.dtype)
  if weights_dropout is not None:
    weights = weights_dropout(weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """`y + bias` over the last axis, in `y`'s dtype; the bias gradient is
  summed in float32 and handed back in `bias`'s dtype."""
  return y + bias.astype(y.dtype)


def _add_bias_forward(y, bias):
  return add_bias(y, bias), bias  # a vector: kept for its dtype


def _add_bias_backward(bias, dy):
  dbias = jnp.sum(dy.astype(jnp.float32), axis=tuple(range(dy.ndim - 1)))
  return dy, dbias.astype(bias.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


class Conv(nn.Conv):
  """nn.Conv (same fields, parameters and names) whose bias is added by
  `add_bias`.

  JAX differentiates nn.Conv's own bias add in the compute dtype: in bfloat16
  a bf16 sum over batch and space, which XLA:CPU widens to float32 and splits
  into a tree of reduce-windows that it runs without vectorising them (the
  README's Speed section has the cost). Summing the float32 gradient directly
  is the same arithmetic without that rewrite.
  """

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not self.use_bias:
      return super().__call__(inputs)
    fields = {f.name: getattr(self, f.name) for f in _CONV_FIELDS}
    unbiased = nn.Conv(**{**fields, "use_bias": False})
    nn.share_scope(self, unbiased)  # its kernel is this module's "kernel"
    y = unbiased(inputs)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    return add_bias(y, bias)


_CONV_FIELDS = [
  f for f in dataclasses.fields(nn.Conv) if f.init and f.name not in ("parent", "name")
]


def conv_module(conv_general_dilated: ConvFn) -> ModuleDef:
  """`Conv` (nn.Conv's parameters and names) computing with `conv_general_dilated`."""
  if conv_general_dilated is xla_conv:
    return Conv
  return functools.partial(Conv, conv_general_dilated=conv_general_dilated)


def _one_pass_activation(
  name: str, value: Callable[[jax.Array], jax.Array], slope: Callable[[jax.Array], jax.Array]
) -> Callable[[jax.Array], jax.Array]:
  """An elementwise activation computed as one pass over the activations
  each way: `value` in float32 from the input, rounded once to its dtype;
  the gradient `dy * slope(x)` recomputed from the saved input alone.

  Autodiff of flax's bf16 activations makes XLA:CPU store their
  intermediates (GELU's cube term, tanh and half-sum; swish's sigmoid) as
  arrays of their own, each rounded to bf16, and read them back in the
  backward pass: 12% of the speedrun step in bf16 on a Zen 5.
  """

  @jax.custom_vjp
  def activation_fn(x: jax.Array) -> jax.Array:
    return value(x.astype(jnp.float32)).astype(x.dtype)

  def forward(x):
    return activation_fn(x), x

  def backward(x, dy):
    return ((dy.astype(jnp.float32) * slope(x.astype(jnp.float32))).astype(x.dtype),)

  activation_fn.defvjp(forward, backward)
  activation_fn.__name__ = activation_fn.__qualname__ = name
  return activation_fn


_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715


def _gelu_tanh(x):
  return jnp.tanh(_GELU_C * (x + _GELU_A * x * x * x))


def _gelu_tanh_slope(x):
  t = _gelu_tanh(x)
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)


# erfc as flax writes it: lax.erf lowers to a StableHLO composite that
# TensorFlow's deserializer (jax2tf export) does not know.
def _gelu_erf_cdf(x):
  return 0.5 * lax.erfc(x * np.float32(-np.sqrt(0.5)))


def _gelu_erf_slope(x):
  return _gelu_erf_cdf(x) + x * jnp.exp(-0.5 * x * x) * np.float32(1.0 / np.sqrt(2.0 * np.pi))


def _swish_slope(x):
  s = jax.nn.sigmoid(x)
  return s * (1.0 + x * (1.0 - s))


# flax's nn.gelu (tanh approximation), nn.gelu(approximate=False) and nn.swish.
gelu = _one_pass_activation("gelu", lambda x: 0.5 * x * (1.0 + _gelu_tanh(x)), _gelu_tanh_slope)
gelu_exact = _one_pass_activation("gelu_exact", lambda x: x * _gelu_erf_cdf(x), _gelu_erf_slope)
swish = _one_pass_activation("swish", lambda x: x * jax.nn.sigmoid(x), _swish_slope)


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
  "relu": nn.relu,
  "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
  "relu6": nn.relu6,
  "gelu": gelu,
  "swish": swish,
  "silu": swish,
  "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}


def activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_batch(
  x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch normalisation over every axis but the last:
  `(y, mean, var)`, with `y` in `x`'s dtype and the batch statistics (the
  biased variance) in float32, as nn.BatchNorm computes them
  (`use_fast_variance`).

  Its gradient is the closed form, two passes over the activations (the sums
  of dy and dy * x_hat, then dx), each reading bf16 and computing in
  float32: autodiff of nn.BatchNorm makes XLA:CPU write float32 copies of
  the activations and gradients and walk them several times more.
  """
  return _normalize_batch_forward(x, scale, bias, epsilon)[0]


def _batch_axes(x: jax.Array) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1))


def _normalize_batch_forward(x, scale, bias, epsilon):
  axes = _batch_axes(x)
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axes)
  var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
  inv = lax.rsqrt(var + epsilon)
  multiplier = inv * scale.astype(jnp.float32)
  y = xf * multiplier + (bias.astype(jnp.float32) - mean * multiplier)
  return (y.astype(x.dtype), mean, var), (x, mean, inv, scale, bias)


def _normalize_batch_backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale, bias = residuals
  dy, dmean, dvar = cotangents
  axes = _batch_axes(x)
  n = x.size // x.shape[-1]
  dyf = dy.astype(jnp.float32)
  centred = x.astype(jnp.float32) - mean
  dbias = jnp.sum(dyf, axes)
  dscale = jnp.sum(dyf * centred, axes) * inv
  # d/dx of y, then of the returned statistics (zero in training, where only
  # the running averages read them; kept so the function is differentiable).
  dx = (scale.astype(jnp.float32) * inv) * (dyf - (dbias + centred * inv * dscale) / n)
  dx = dx + (dmean + 2.0 * dvar * centred) / n
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


normalize_batch.defvjp(_normalize_batch_forward, _normalize_batch_backward)


def _unbiased_factor(n):
  """n / (n - 1): the biased variance of n values to the unbiased one (n = 1,
  where PyTorch refuses to train, keeps the biased one). `n` may be traced
  (a psum over devices)."""
  return n / jnp.maximum(n - 1, 1)


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm whose running variance averages the unbiased batch variance,
  normalising training batches with `normalize_batch`.

  PyTorch normalises a training batch by its biased variance (as flax does) but
  updates ``running_var`` with the unbiased one, ``n / (n - 1)`` times larger,
  where n counts the values per channel (batch x height x width, over all
  devices of ``axis_name``); flax's own update uses the biased one. Same
  name, fields and variables as nn.BatchNorm: checkpoints restore and evaluate
  as before; only the statistics of further training steps differ, by that
  factor on each step's new term.

  Training batches of features-last inputs on one program (no ``axis_name``:
  jit, whose global arrays already hold the whole batch) take
  `normalize_batch`; under pmap (``axis_name``), with other feature axes,
  and at initialisation, nn.BatchNorm normalises.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    frozen = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    updates = not frozen and not self.is_initializing()
    if updates and self._normalizes_itself(x):
      return self._normalize_training_batch(x)
    old_var = self.get_variable("batch_stats", "var") if updates else None
    y = super().__call__(x, use_running_average)
    if updates:
      feature_axes = {a % x.ndim for a in np.atleast_1d(self.axis)}
      n = int(np.prod([d for a, d in enumerate(x.shape) if a not in feature_axes]))
      if self.axis_name is not None:
        n = lax.psum(n, self.axis_name)
      # flax stored momentum * old + (1 - momentum) * biased: rescale the new term.
      kept = self.momentum * old_var
      fresh = self.get_variable("batch_stats", "var") - kept
      self.put_variable("batch_stats", "var", kept + fresh * _unbiased_factor(n))
    return y

  def _normalizes_itself(self, x) -> bool:
    return (
      self.axis_name is None
      and self.dtype is not None
      and tuple(a % x.ndim for a in np.atleast_1d(self.axis)) == (x.ndim - 1,)
      and self.use_fast_variance
      and self.force_float32_reductions
    )

  def _normalize_training_batch(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
    scale = (
      self.param("scale", self.scale_init, features, self.param_dtype)
      if self.use_scale
      else jnp.ones(features, jnp.float32)
    )
    bias = (
      self.param("bias", self.bias_init, features, self.param_dtype)
      if self.use_bias
      else jnp.zeros(features, jnp.float32)
    )
    y, mean, var = normalize_batch(x.astype(self.dtype), scale, bias, self.epsilon)
    n = x.size // x.shape[-1]
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * _unbiased_factor(n)
    return y


def batch_norm(
  train: bool,
  dtype: Any,
  axis_name: str | None,
  *,
  use_affine: bool = True,
  zero_init: bool = False,
  momentum: float = 0.9,
  use_scale: bool | None = None,
  name: str | None = None,
) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults and updates (momentum 0.1 == flax 0.9,
  eps 1e-5, running variance from the unbiased batch variance: `BatchNorm`).

  Statistics are reduced in float32 even when ``dtype`` is bfloat16, and
  ``axis_name`` averages them across pmap devices so that multi-device training
  normalises with the statistics of the global batch. ``momentum`` is flax's
  (the weight of the old running average: PyTorch's ``1 - momentum``);
  ``use_scale=False`` keeps the bias but drops the scale (``None``: as
  ``use_affine``).
  """
  return BatchNorm(
    use_running_average=not train,
    momentum=momentum,
    epsilon=1e-5,
    dtype=dtype,
    axis_name=axis_name,
    use_bias=use_affine,
    use_scale=use_affine if use_scale is None else use_scale,
    scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
    name=name,
  )


class ConvNormAct(nn.Module):
  """Conv (symmetric 'same' padding, PyTorch style) -> optional norm -> optional act.

  ``norm`` is a zero-argument factory such as
  ``functools.partial(batch_norm, train, dtype, axis_name)``; without it the
  convolution gets a bias. ``groups == features`` makes it depthwise.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  norm: Callable[[], nn.Module] | None = None
  act: Callable[[jnp.ndarray], jnp.ndarray] | None = None
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x):
    if self.kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
    pad = self.kernel_size // 2
    x = self.conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      self.strides,
      padding=pad,
      feature_group_count=self.groups,
      use_bias=self.norm is None,
      dtype=x.dtype,
    )(x)
    if self.norm is not None:
      x = self.norm()(x)
    if self.act is not None:
      x = self.act(x)
    return x


class DropPath(nn.Module):
  """Stochastic depth (Huang et al., 2016), a.k.a. drop_connect in EfficientNet.

  Zeroes the residual branch ``x`` for a random subset of the samples and
  rescales the kept ones by ``1 / (1 - rate)``. Uses the 'dropout' rng; the
  identity when ``deterministic`` or ``rate == 0``.
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def max_pool(x: jnp.ndarray, size: int = 2) -> jnp.ndarray:
  """Non-overlapping `size` x `size` max pooling (stride = size, VALID, NHWC).

  The same values and gradients as `nn.max_pool` (the gradient of each
  window goes to its first maximum in row-major order, as XLA's
  select-and-scatter and PyTorch do), computed faster on CPU by
  `_window_max`: XLA:CPU's select-and-scatter, and the gradient of a
  reshape-and-reduce-max, are several times slower.
  """
  _, h, w, _ = x.shape
  return _window_max(x[:, : h - h % size, : w - w % size], size)  # VALID: drop the border


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jnp.ndarray, size: int) -> jnp.ndarray:
  """Max over the `size`**2 phases x[:, dy::size, dx::size] of an NHWC
  array whose height and width are multiples of `size`.

  Elementwise maxima of strided slices keep the channels innermost, which
  XLA vectorises (a reduce over the window axes of a reshape it does not).
  The forward pass also records, as int8, which phase won each window; the
  backward pass routes the gradient there with one broadcast compare-select,
  where XLA's own gradient of the slices would pad and add each phase.
  """
  return _window_max_forward(x, size)[0]


def _window_max_forward(x, size):
  phases = [x[:, dy::size, dx::size] for dy in range(size) for dx in range(size)]
  out = functools.reduce(jnp.maximum, phases)
  winner = jnp.full(out.shape, len(phases) - 1, jnp.int8)
  for i in reversed(range(len(phases) - 1)):  # the first maximum wins ties
    winner = jnp.where(phases[i] == out, jnp.int8(i), winner)
  return out, winner


def _window_max_backward(size, winner, g):
  b, h, w, c = g.shape
  phase = jnp.arange(size * size, dtype=jnp.int8).reshape(1, 1, size, 1, size, 1)
  routed = jnp.where(
    winner[:, :, None, :, None, :] == phase, g[:, :, None, :, None, :], jnp.zeros((), g.dtype)
  )
  return (routed.reshape(b, h * size, w * size, c),)


_window_max.defvjp(_window_max_forward, _window_max_backward)


# Transformers (ViT, Swin) initialise dense layers from a truncated normal of
# std 0.02, as their reference implementations do.
transformer_dense_init = nn.initializers.truncated_normal(0.02)
TransformerDense = functools.partial(nn.Dense, kernel_init=transformer_dense_init)


def transformer_dense(dot_general: DotFn) -> ModuleDef:
  """TransformerDense (same parameters and names) computing with `dot_general`."""
  if dot_general is xla_dot:
    return TransformerDense
  return functools.partial(TransformerDense, dot_general=dot_general)


class PendingAffine(NamedTuple):
  """A LayerNorm's output `normalized * scale + shift` before its per-feature
  `scale` and `shift` are applied. The dense layer that reads it folds them
  into its kernel and bias instead (`FoldingDense`), because XLA:CPU
  materialises the scale's broadcast to the activations' shape in the forward
  and backward passes, which the folded form never forms (README, Speed)."""

  normalized: jax.Array
  scale: jax.Array
  shift: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    """The activations' shape, as an array's: the modules that take either read it."""
    return self.normalized.shape

  def map_tokens(self, fn: Callable[[jax.Array], jax.Array]) -> PendingAffine:
    """`fn`, a rearrangement of the tokens that keeps features last (Swin's
    roll and window partition), applied to the normalized activations; the
    per-feature scale and shift commute with it."""
    return self._replace(normalized=fn(self.normalized))


class DeferredLayerNorm(nn.Module):
  """nn.LayerNorm over the last axis (same parameters, names and statistics:
  float32 mean and E[x^2] - E[x]^2 variance) returning a `PendingAffine`, for
  a `FoldingDense` to apply its scale and shift."""

  epsilon: float = 1e-6
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> PendingAffine:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    shift = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    x32 = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    mean = x32.mean(-1, keepdims=True)
    var = jnp.maximum(0.0, jnp.square(x32).mean(-1, keepdims=True) - jnp.square(mean))
    normalized = (x32 - mean) * lax.rsqrt(var + self.epsilon)
    return PendingAffine(normalized.astype(self.dtype or x32.dtype), scale, shift)


class FoldingDense(nn.Module):
  """TransformerDense (same parameters, initialisation and names) that also
  reads a `PendingAffine`: (n * s + t) W + b is computed as n (s W) + (t W + b),
  the same function with the LayerNorm's scale and shift folded into the
  (features x outputs) kernel and bias."""

  features: int
  dtype: Any = None
  use_bias: bool = True
  dot_general: DotFn = xla_dot

  @nn.compact
  def __call__(self, x: jax.Array | PendingAffine) -> jax.Array:
    kernel = self.param("kernel", transformer_dense_init, (x.shape[-1], self.features), jnp.float32)
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    inputs = x
    if isinstance(x, PendingAffine):
      folded_bias = x.shift @ kernel
      bias = folded_bias if bias is None else bias + folded_bias
      kernel = x.scale[:, None] * kernel
      inputs = x.normalized
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = self.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=None)
    return y if bias is None else y + bias


def multi_head_attention(
  x: jax.Array | PendingAffine,
  bias: jax.Array | None,
  *,
  num_heads: int,
  dtype: Any,
  attention: AttentionFn,
  dot_general: DotFn,
  weights_dropout_rate: float,
  train: bool,
) -> jax.Array:
  """The qkv projection, `attention` and the output projection of tokens `x`
  (batch, tokens, features), as ViT's and Swin's attention modules compute
  them; called inside their compact `__call__`, so the two dense layers are
  their children "qkv" and "proj"."""
  b, n, c = x.shape
  head_dim = c // num_heads
  qkv = FoldingDense(3 * c, dtype, dot_general=dot_general, name="qkv")(x)
  qkv = qkv.reshape(b, n, 3, num_heads, head_dim)
  dropout = None
  if train and weights_dropout_rate > 0:
    dropout = nn.Dropout(weights_dropout_rate, deterministic=False)
  x = attention(qkv, bias, scale=head_dim**-0.5, weights_dropout=dropout)
  proj = transformer_dense(dot_general)(c, dtype=dtype, name="proj")
  return proj(x.reshape(b, n, c))


class TransformerMlp(nn.Module):
  """The transformer feed-forward block: dense, GELU, dropout, dense, dropout."""

  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  dot_general: DotFn = xla_dot

  @nn.compact
  def __call__(self, x: jax.Array | PendingAffine, train: bool):
    features = x.shape[-1]
    dense = transformer_dense(self.dot_general)
    x = FoldingDense(self.hidden, self.dtype, dot_general=self.dot_general, name="Dense_0")(x)
    x = gelu_exact(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(features, dtype=self.dtype, name="Dense_1")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)
