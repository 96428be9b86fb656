"""EfficientNet-B0/B1 (Tan & Le, 2019) adapted to 32x32 inputs.

MBConv blocks (1x1 expansion, depthwise kxk, squeeze-excitation on a quarter of
the block's input channels, linear 1x1 projection), swish (SiLU) activations,
per-sample stochastic depth ("drop_connect", rate rising linearly from 0 to
``drop_connect_rate`` over the blocks, on residual blocks only), a 1x1 head
conv to 1280 channels, global pooling and a dropout head. ``width_mult``
scales channels (rounded to multiples of 8) and ``depth_mult`` the repeats
(rounded up): B0 is (1.0, 1.0), B1 is (1.0, 1.1).

Adapted to 32x32: on 224x224 the stem and stages 2, 3, 4 and 6 have stride 2
(224 -> 7). Here the stem and stage 2 (24 channels) have stride 1, so stages
1-2 run at 32x32, stage 3 at 16x16, stages 4-5 at 8x8 and stages 6-7 and the
head at 4x4 (total stride 8). ``stem_stride``, ``strides`` and the stage table
``stages`` (default: B0's) are fields. Otherwise this is torchvision's
``efficientnet_b0/b1``: with stride 1 in its stem conv (``features[0][0]``)
and in stage 2's first depthwise conv (``features[2][0].block[1][0]``)
torchvision's model computes the same function (tests/reference_test.py), and
with ``stem_stride=2, strides=(1, 2, 2, 2, 1, 2, 1)`` the stock one.
BatchNorm uses the project's PyTorch defaults (eps 1e-5, as torchvision's
B0/B1 do) rather than the TensorFlow original's 1e-3.
Parameters with 10 classes: B0 4,020,358, B1 6,525,994 (torchvision's counts
minus the 1000-class head difference).
"""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import Callable
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cifar_jax import models
from cifar_jax.models import layers
from cifar_jax.models.layers import ConvNormAct
from cifar_jax.models.layers import DropPath

# Per stage: (expand_ratio, kernel, out_channels, repeats) before width/depth
# scaling. Strides are a separate field.
B0_STAGES = (
  (1, 3, 16, 1),
  (6, 3, 24, 2),
  (6, 5, 40, 2),
  (6, 3, 80, 3),
  (6, 5, 112, 3),
  (6, 5, 192, 4),
  (6, 3, 320, 1),
)


def round_filters(channels: float, width_mult: float, divisor: int = 8) -> int:
  """Scales ``channels`` and rounds to a multiple of ``divisor`` (>= 90%)."""
  channels *= width_mult
  new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  if new < 0.9 * channels:
    new += divisor
  return int(new)


def round_repeats(repeats: int, depth_mult: float) -> int:
  return int(math.ceil(depth_mult * repeats))


class SqueezeExcite(nn.Module):
  """Channel gates from globally pooled features: reduce, act, expand, sigmoid."""

  squeeze_features: int
  act: Callable[[jnp.ndarray], jnp.ndarray]
  conv: layers.ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.act(self.conv(self.squeeze_features, (1, 1), dtype=x.dtype)(s))
    s = nn.sigmoid(self.conv(x.shape[-1], (1, 1), dtype=x.dtype)(s))
    return x * s


class MBConv(nn.Module):
  features: int
  expand_ratio: int
  kernel_size: int
  strides: int
  se_ratio: float
  drop_rate: float
  norm: Callable[[], nn.Module]
  act: Callable[[jnp.ndarray], jnp.ndarray]
  conv: layers.ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x, train: bool):
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    unit = functools.partial(ConvNormAct, norm=self.norm, conv=self.conv)
    y = x
    if self.expand_ratio != 1:
      y = unit(hidden, 1, act=self.act)(y)
    y = unit(hidden, self.kernel_size, self.strides, groups=hidden, act=self.act)(y)
    if self.se_ratio > 0:
      y = SqueezeExcite(max(1, int(in_features * self.se_ratio)), self.act, self.conv)(y)
    y = unit(self.features, 1, act=None)(y)
    if self.strides == 1 and in_features == self.features:
      y = x + DropPath(self.drop_rate)(y, deterministic=not train)
    return y


class EfficientNet(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  se_ratio: float = 0.25
  stages: Sequence[tuple[int, int, int, int]] = B0_STAGES
  stem_stride: int = 1
  strides: Sequence[int] = (1, 1, 2, 2, 1, 2, 1)  # ImageNet: (1, 2, 2, 2, 1, 2, 1)
  head_features: int = 1280
  activation: str = "swish"
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.strides) != len(self.stages):
      raise ValueError(f"strides {self.strides} needs one entry per stage ({len(self.stages)})")
    norm = functools.partial(layers.batch_norm, train, self.dtype, self.bn_axis_name)
    act = layers.activation(self.activation)
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    x = ConvNormAct(
      round_filters(32, self.width_mult),
      3,
      self.stem_stride,
      norm=norm,
      act=act,
      conv=conv,
      name="stem",
    )(x)
    repeats = [round_repeats(r, self.depth_mult) for *_, r in self.stages]
    drop_rates = np.linspace(0.0, self.drop_connect_rate, sum(repeats) + 1)[:-1]
    block = 0
    for (expand, kernel, out, _), n, stride in zip(self.stages, repeats, self.strides):
      for i in range(n):
        x = MBConv(
          round_filters(out, self.width_mult),
          expand,
          kernel,
          stride if i == 0 else 1,
          self.se_ratio,
          float(drop_rates[block]),
          norm,
          act,
          conv,
        )(x, train)
        block += 1
    x = ConvNormAct(
      round_filters(self.head_features, self.width_mult),
      1,
      norm=norm,
      act=act,
      conv=conv,
      name="head_conv",
    )(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("efficientnet_b0", functools.partial(EfficientNet))
models.register("efficientnet_b1", functools.partial(EfficientNet, depth_mult=1.1))
