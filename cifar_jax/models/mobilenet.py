"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 inputs.

Inverted residual blocks: 1x1 expansion (ratio t) + ReLU6, depthwise 3x3 +
ReLU6, linear 1x1 bottleneck projection; a residual connection when the stride
is 1 and the channel count is unchanged. Stem 3x3 conv to 32 channels, a final
1x1 conv to 1280 channels, global pooling, dropout and the classifier.
``width_mult`` scales every width (rounded to multiples of 8; the last conv
only grows, never shrinks, as in the paper).

Adapted to 32x32 as the usual CIFAR ports do: the ImageNet stem has stride 2
and the 24-channel stage has stride 2 (224 -> 7); both have stride 1 here, so
the network downsamples 32 -> 16 -> 8 -> 4 in the 32-, 64- and 160-channel
stages and the final map is 4x4. ``stem_stride``, ``strides`` and the stage
table ``stages`` (default: the paper's) are fields. Otherwise this is
torchvision's ``mobilenet_v2``: given the stage table with stride 1 for the
24-channel stage and a stride-1 stem conv (``features[0][0]``), torchvision's
model computes the same function (tests/reference_test.py), and with
``stem_stride=2, strides=(1, 2, 2, 2, 1, 2, 1)`` the stock one.
Parameters with 10 classes: 2,236,682 (torchvision's count minus the
1000-class head difference).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax import models
from cifar_jax.models import layers
from cifar_jax.models.layers import ConvNormAct

# Per stage: (expand_ratio t, out_channels c, repeats n). Strides are a field.
STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


class InvertedResidual(nn.Module):
  features: int
  strides: int
  expand_ratio: int
  norm: Any
  act: Any
  conv: layers.ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expand_ratio))
    unit = functools.partial(ConvNormAct, norm=self.norm, conv=self.conv)
    y = x
    if self.expand_ratio != 1:
      y = unit(hidden, 1, act=self.act)(y)
    y = unit(hidden, 3, self.strides, groups=hidden, act=self.act)(y)
    y = unit(self.features, 1, act=None)(y)
    if self.strides == 1 and in_features == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  width_mult: float = 1.0
  dropout_rate: float = 0.2
  stages: Sequence[tuple[int, int, int]] = STAGES
  stem_stride: int = 1
  strides: Sequence[int] = (1, 1, 2, 2, 1, 2, 1)  # ImageNet: (1, 2, 2, 2, 1, 2, 1)
  last_features: int = 1280
  activation: str = "relu6"
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
      make_divisible(32 * self.width_mult),
      3,
      self.stem_stride,
      norm=norm,
      act=act,
      conv=conv,
      name="stem",
    )(x)
    for (t, c, n), s in zip(self.stages, self.strides):
      for i in range(n):
        x = InvertedResidual(
          make_divisible(c * self.width_mult), s if i == 0 else 1, t, norm, act, conv
        )(x)
    last = make_divisible(self.last_features * max(1.0, self.width_mult))
    x = ConvNormAct(last, 1, norm=norm, act=act, conv=conv, name="last_conv")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("mobilenet_v2", MobileNetV2)
