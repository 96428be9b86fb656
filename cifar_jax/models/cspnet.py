"""CSPDarknet-style network (Wang et al., 2020, "CSPNet") for 32x32 inputs.

Layout: 3x3 conv (stem, stride 1), 3x3 stride-2 conv, then for each CSP stage
[CSP block, 3x3 stride-2 conv], global average pool, FC. Every convolution is
a conv-BatchNorm-activation unit, Mish by default as in CSPDarknet53.

A CSP block with C channels splits its input with two 1x1 convolutions into
two C/2-channel paths. One path runs ``depths[i]`` residual bottleneck units
(1x1 conv halving the channels, 3x3 conv restoring them, added to the unit's
input) and a 1x1 partial transition; the other path is left alone. The two
are concatenated and fused by a 1x1 transition back to C channels.

Adapted to 32x32: CSPDarknet53 has a stride-1 stem and five stride-2
downsamplings, one before each of its five CSP stages (224 -> 7). Here there
are three stride-2 convolutions and two CSP stages (32 -> 16 -> 8 -> 4), so the
CSP blocks work at 16x16 and 8x8 and the last 4x4 map is pooled; fewer and
shorter stages also keep the model CIFAR-sized. ``stem_width``, ``widths``
(the outputs of the stride-2 convs; CSP stage i works at ``widths[i]``),
``depths`` and ``activation`` are fields. Defaults give 2,076,074 parameters.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax import models
from cifar_jax.models import layers
from cifar_jax.models.layers import ConvNormAct


class CSPBlock(nn.Module):
  """Cross-stage-partial block of ``num_units`` residual bottleneck units."""

  features: int
  num_units: int
  norm: Callable[[], nn.Module]
  act: Callable[[jnp.ndarray], jnp.ndarray]
  conv: layers.ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvNormAct, norm=self.norm, act=self.act, conv=self.conv)
    half = self.features // 2
    shortcut_path = unit(half, 1, name="split_shortcut")(x)
    y = unit(half, 1, name="split_main")(x)
    for i in range(self.num_units):
      r = unit(half // 2, 1, name=f"unit{i}_reduce")(y)  # 1x1, halves channels
      r = unit(half, 3, name=f"unit{i}_conv")(r)
      y = y + r
    y = unit(half, 1, name="partial_transition")(y)
    y = jnp.concatenate([y, shortcut_path], axis=-1)
    return unit(self.features, 1, name="fuse_transition")(y)


class CSPNet(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  stem_width: int = 32
  widths: Sequence[int] = (128, 256, 512)
  depths: Sequence[int] = (2, 4)
  activation: str = "mish"
  dropout_rate: float = 0.0
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.widths) != len(self.depths) + 1:
      raise ValueError(
        "widths needs one entry per stride-2 conv, i.e. "
        f"len(depths) + 1; got {self.widths} and {self.depths}"
      )
    norm = functools.partial(layers.batch_norm, train, self.dtype, self.bn_axis_name)
    conv = layers.conv_module(self.conv_general_dilated)
    unit = functools.partial(
      ConvNormAct, norm=norm, act=layers.activation(self.activation), conv=conv
    )
    x = x.astype(self.dtype)
    x = unit(self.stem_width, 3, name="stem")(x)
    x = unit(self.widths[0], 3, 2, name="down0")(x)
    for i, depth in enumerate(self.depths):
      x = CSPBlock(
        self.widths[i], depth, norm, layers.activation(self.activation), conv, name=f"csp{i}"
      )(x)
      x = unit(self.widths[i + 1], 3, 2, name=f"down{i + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("cspnet", CSPNet)
