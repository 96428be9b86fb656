"""CIFAR ResNets (He et al., 2016) with the ImageNet block layout.

Adapted to 32x32 inputs the way the CIFAR literature (and the seeds) do it: a
3x3 stride-1 stem and no max-pool, so the four stages see 32, 16, 8 and 4
pixels. Otherwise the network is torchvision's ``resnet18/34/50`` (v1.5: a
Bottleneck strides in its 3x3 conv; 1x1 projection shortcuts): torchvision's
model with ``conv1`` replaced by a 3x3 stride-1 conv (padding 1, no bias),
``maxpool`` by the identity and a 10-class ``fc`` computes the same function
(tests/reference_test.py). ``stem="imagenet"`` restores torchvision's 7x7
stride-2 conv and 3x3 stride-2 max-pool for 224x224 inputs.
ResNet18/34/50 have 11,173,962 / 21,282,122 / 23,520,842 parameters.
Options from one seed: ``dropout_rate`` before the classifier and
``activation`` (``relu`` or ``leaky_relu``).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax import models
from cifar_jax.models import layers


class BasicBlock(nn.Module):
  """Two kxk convolutions plus a shortcut (identity or skip_kernel_size projection).

  ``kernel_size`` and ``skip_kernel_size`` must be odd (symmetric padding k//2
  keeps 'same' sizes); the defaults 3 and 1 are the standard ResNet block.
  """

  features: int
  strides: int
  norm: Any
  act: Any
  kernel_size: int = 3
  skip_kernel_size: int = 1
  conv: layers.ModuleDef = nn.Conv
  expansion = 1

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    if k % 2 != 1:
      raise ValueError(f"kernel_size must be odd, got {k}")
    y = self.conv(
      self.features, (k, k), self.strides, padding=k // 2, use_bias=False, dtype=x.dtype
    )(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.features, (k, k), padding=k // 2, use_bias=False, dtype=x.dtype)(y)
    y = self.norm()(y)
    return self.act(
      y + _shortcut(x, self.features, self.strides, self.norm, self.conv, self.skip_kernel_size)
    )


class Bottleneck(nn.Module):
  features: int
  strides: int
  norm: Any
  act: Any
  conv: layers.ModuleDef = nn.Conv
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.features * self.expansion
    y = self.act(self.norm()(self.conv(self.features, (1, 1), use_bias=False, dtype=x.dtype)(x)))
    y = self.conv(self.features, (3, 3), self.strides, padding=1, use_bias=False, dtype=x.dtype)(y)
    y = self.act(self.norm()(y))
    y = self.norm()(self.conv(out, (1, 1), use_bias=False, dtype=x.dtype)(y))
    return self.act(y + _shortcut(x, out, self.strides, self.norm, self.conv))


def _shortcut(x, features: int, strides: int, norm, conv: layers.ModuleDef, kernel_size: int = 1):
  """Identity, or a kxk (default 1x1) projection + BN when the shape changes."""
  if strides == 1 and x.shape[-1] == features:
    return x
  if kernel_size % 2 != 1:
    raise ValueError(f"skip kernel_size must be odd, got {kernel_size}")
  y = conv(
    features,
    (kernel_size, kernel_size),
    strides,
    padding=kernel_size // 2,
    use_bias=False,
    dtype=x.dtype,
  )(x)
  return norm()(y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block: Any = BasicBlock
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  width: int = 64
  dropout_rate: float = 0.0
  activation: str = "relu"
  stem: str = "cifar"  # or "imagenet": 7x7 stride-2 conv, then 3x3 stride-2 max-pool
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
    norm = functools.partial(layers.batch_norm, train, self.dtype, self.bn_axis_name)
    act = layers.activation(self.activation)
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
    else:
      x = conv(self.width, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype)(x)
    x = act(norm()(x))
    if self.stem == "imagenet":  # padded with -inf, as torch's max-pool pads
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = self.block(self.width * 2**stage, strides, norm, act, conv=conv)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("resnet18", functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)))
models.register("resnet34", functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)))
models.register("resnet50", functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck))
