"""``speedrun``: the network of Keller Jordan's airbench94 (94% on CIFAR-10 in
about 10 epochs), rewritten for this repo's model contract.

Layout at the defaults (feature map sizes for a 32x32 input)::

    patch whitening: 2x2 conv, VALID, 24 filters + bias   32 -> 31, then GELU
    3 conv groups of widths 64, 256, 256, each
        conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU
                                                          31 -> 15 -> 7 -> 3
    global max pool (airbench's MaxPool2d(3) on the 3x3 map) -> linear
    256 -> 10 without bias -> logits * 1/9

1,971,352 trainable parameters (plus the 288 frozen whitening weights).

Larger members of the family are options: ``widths`` (airbench95:
128/384/384) and ``block_depth=3`` (airbench96: a third conv per group with a
residual connection, see ``ConvGroup``; 128/384/512 in configs/speedrun93.py).

Patch whitening. The first layer's 2 * 12 filters are the eigenvectors ``v_i``
of the (uncentred) covariance of all 2x2x3 patches of a sample of training
images, scaled by ``1 / sqrt(lambda_i + eps)``, and their negations: each
filter pair responds to one decorrelated, unit-variance patch component, and
the GELU after it keeps both signs. The filters are computed from data by
``init_whitening`` (registered with ``models.register_data_init``;
``run.create_train_state`` runs it on the first 5,000 training images) and
stay FROZEN, as in airbench. Being data statistics rather than trained
weights, they live in the ``batch_stats`` collection next to the BatchNorm
statistics: checkpointed, replicated and EMA-averaged (a no-op) like them, and
out of reach of the optimizer and of weight decay. Without data (a template
for restoring, a benchmark) they start as the whitening of white patches: the
identity on the 12 patch components, and the negation. The layer's bias is a
trainable parameter for the whole run (airbench trains it for the first 3
epochs only, then freezes it, which saves time rather than accuracy).

Other airbench details kept: convolutions without bias, initialised like
PyTorch's (U(+-1/sqrt(fan_in))) with the first ``min(in, out)`` filters set
to the identity ("dirac" init, an implicit residual); BatchNorm with running
statistics momentum 0.6 (flax convention; PyTorch's 0.4), a bias and no scale
(eps stays 1e-5, not airbench's 1e-12: float32 activations of order one make
the difference immaterial). Activation is GELU's tanh approximation as
`layers.gelu` computes it, one fused pass each way (airbench uses the exact
erf form).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cifar_jax import models
from cifar_jax.models import layers

# Added to each eigenvalue before 1/sqrt: bounds the gain of the filters of the
# near-degenerate patch components (airbench's value, for normalised images).
WHITENING_EPS = 5e-4

# PyTorch's default for conv and linear weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dirac_init(key, shape, dtype=jnp.float32):
  """PyTorch's default conv init with the first ``min(in, out)`` output filters
  replaced by identities (a one at the centre tap of their own input channel),
  as airbench's partial dirac init."""
  kh, kw, cin, cout = shape
  n = min(cin, cout)
  identity = (
    jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n, dtype=dtype))
  )
  return _torch_uniform(key, shape, dtype).at[..., :n].set(identity)


def whitening_filters(images: Any, patch_size: int = 2, eps: float = WHITENING_EPS) -> np.ndarray:
  """(p, p, C, p*p*C) conv kernel (HWIO) whitening the p x p patches of ``images``.

  ``images`` (N, H, W, C) are as the model receives them (normalised). Column
  ``i`` is the i-th eigenvector of the patches' second-moment matrix, largest
  eigenvalue first, divided by ``sqrt(eigenvalue + eps)``; a VALID conv with
  it gives patch components with second moments ``lambda / (lambda + eps)``,
  i.e. about the identity.
  """
  images = np.asarray(images, np.float32)
  _, height, width, channels = images.shape
  p = patch_size
  dim = p * p * channels
  moment = np.zeros((dim, dim), np.float64)
  count = 0
  for start in range(0, len(images), 500):  # bounded memory for the patches
    chunk = images[start : start + 500]
    # Patch vectors ordered (dy, dx, channel), as a flattened HWIO kernel.
    patches = np.concatenate(
      [
        chunk[:, dy : height - p + 1 + dy, dx : width - p + 1 + dx]
        for dy in range(p)
        for dx in range(p)
      ],
      axis=-1,
    ).reshape(-1, dim)
    patches = patches.astype(np.float64)
    moment += patches.T @ patches
    count += len(patches)
  eigenvalues, eigenvectors = np.linalg.eigh(moment / count)
  order = np.argsort(eigenvalues)[::-1]
  filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
  return filters.reshape(p, p, channels, dim).astype(np.float32)


class PatchWhitening(nn.Module):
  """VALID p x p conv with frozen +/- whitening filters and a trainable bias.

  The filters are the ``batch_stats`` variable ``kernel`` (see the module
  docstring); ``init_whitening`` sets them from data.
  """

  patch_size: int = 2
  dtype: Any = jnp.float32
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x):
    p, channels = self.patch_size, x.shape[-1]
    dim = p * p * channels

    def identity_filters():
      half = jnp.eye(dim, dtype=jnp.float32).reshape(p, p, channels, dim)
      return jnp.concatenate([half, -half], axis=-1)

    kernel = self.variable("batch_stats", "kernel", identity_filters).value
    bias = self.param("bias", nn.initializers.zeros, (2 * dim,), jnp.float32)
    y = self.conv_general_dilated(
      x, kernel.astype(self.dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias.astype(self.dtype)


def padding_before_pool(size: int, pool: int = 2) -> tuple[tuple[int, int], tuple[int, int]]:
  """Padding of a 3x3 conv whose output is max-pooled by ``pool`` (VALID).

  The pool drops the last ``size % pool`` rows and columns of a SAME conv's
  output, so padding the far side by that much less computes exactly the rows
  and columns that are kept (31x31 -> 30x30 instead of 31 then a cropping
  copy): the same values and gradients, less work.
  """
  dropped = size % pool
  if dropped > 1:
    raise ValueError(f"a 3x3 conv cannot drop {dropped} rows by padding ({size=}, {pool=})")
  return (1, 1 - dropped), (1, 1 - dropped)


class ConvGroup(nn.Module):
  """conv 3x3 -> max-pool 2 -> BN -> act -> conv 3x3 -> BN -> act.

  With ``depth=3`` (airbench96's groups) a third conv 3x3 -> BN follows the
  second, its output is added to the group's first activation (a residual
  around convs 2 and 3), and the activation comes after the sum.
  """

  features: int
  norm: Any
  act: Any
  dtype: Any = jnp.float32
  conv: layers.ModuleDef = nn.Conv
  depth: int = 2

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(
      self.conv, self.features, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=dirac_init
    )
    height, width = x.shape[1:3]
    if height != width:
      raise ValueError(f"ConvGroup expects square feature maps, got {height}x{width}")
    if self.depth not in (2, 3):
      raise ValueError(f"a speedrun conv group has depth 2 or 3, not {self.depth}")
    x = conv(padding=padding_before_pool(height))(x)
    x = self.act(self.norm()(layers.max_pool(x, 2)))
    if self.depth == 2:
      return self.act(self.norm()(conv(padding=1)(x)))
    shortcut = x
    x = self.act(self.norm()(conv(padding=1)(x)))
    return self.act(self.norm()(conv(padding=1)(x)) + shortcut)


class SpeedrunNet(nn.Module):
  """airbench94's network; see the module docstring."""

  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  widths: Sequence[int] = (64, 256, 256)
  block_depth: int = 2  # convs per group: 2 (airbench94/95) or 3 (airbench96)
  whiten_patch_size: int = 2
  bn_momentum: float = 0.6
  logit_scale: float = 1.0 / 9.0
  activation: str = "gelu"
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    norm = functools.partial(
      layers.batch_norm,
      train,
      self.dtype,
      self.bn_axis_name,
      momentum=self.bn_momentum,
      use_scale=False,
    )
    x = x.astype(self.dtype)
    x = act(
      PatchWhitening(self.whiten_patch_size, self.dtype, self.conv_general_dilated, name="whiten")(
        x
      )
    )
    conv = layers.conv_module(self.conv_general_dilated)
    for features in self.widths:
      x = ConvGroup(features, norm, act, self.dtype, conv, self.block_depth)(x)
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, kernel_init=_torch_uniform)(x)
    return x * jnp.asarray(self.logit_scale, x.dtype)


def init_whitening(variables: dict[str, Any], images: Any) -> dict[str, Any]:
  """Data init of ``speedrun``: whitening filters (and negations) from ``images``."""
  stats = variables["batch_stats"]["whiten"]
  kernel = stats["kernel"]
  filters = whitening_filters(images, patch_size=kernel.shape[0])
  new_kernel = jnp.asarray(np.concatenate([filters, -filters], axis=-1), kernel.dtype)
  if new_kernel.shape != kernel.shape:
    raise ValueError(
      f"whitening filters {new_kernel.shape} do not fit the kernel "
      f"{kernel.shape}: images with {np.shape(images)[-1]} channels?"
    )
  batch_stats = {**variables["batch_stats"], "whiten": {**stats, "kernel": new_kernel}}
  return {**variables, "batch_stats": batch_stats}


models.register("speedrun", SpeedrunNet)
models.register_data_init("speedrun", init_whitening)
