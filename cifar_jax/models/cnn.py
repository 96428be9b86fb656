"""Plain convolutional networks of the seed projects.

``my_cnn`` is the six-convolution network of the 'Pytorch-Cifar' seed:
conv 16-32, pool, 64-64, pool, 128-128, pool (3x3, 'same' padding, ReLU), then
FC 2048->512, dropout 0.5, FC 512->10: 1,336,170 parameters. It already works
at 32x32, so nothing was adapted. Features are flattened in NHWC order, which
permutes the first dense layer's inputs relative to PyTorch but changes nothing
else.

``simple_cnn`` (80,090 parameters): conv 3->8 5x5 (valid, 32->28), max-pool 2
(->14), conv 8->16 3x3 (valid, ->12), average-pool 2 (->6), flatten
6*6*16 = 576, FC 576->128->32->10, ReLU throughout. Designed for 32x32 inputs;
nothing adapted.

``deep_cnn`` (453,242 parameters): eight 3x3 convolutions with 20, 24, 32, 40,
(max-pool 2) 48, 56, 64, 72 filters, all with 'valid' padding, ReLU after
each; the 1st and 5th are followed by BatchNorm without affine parameters.
Every valid 3x3 conv removes 2 pixels, so the map goes
32->30->28->26->24, pool ->12, ->10->8->6->4, and the flatten is
4*4*72 = 1152 without any padding. Head: FC 1152->256 + BatchNorm1d (no
affine) + ReLU + dropout 0.3, FC 256->64->32 (ReLU), dropout 0.1,
FC 32->16 (ReLU) ->10. The convolutions keep their biases as the PyTorch
original (nn.Conv2d default) does, even before a BatchNorm.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax import models
from cifar_jax.models import layers


class SixConvNet(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # No BatchNorm; accepted for the contract.
  widths: Sequence[int] = (16, 32, 64, 64, 128, 128)
  hidden: int = 512
  dropout_rate: float = 0.5
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    for i, features in enumerate(self.widths):
      x = nn.relu(conv(features, (3, 3), padding="SAME", dtype=self.dtype)(x))
      if i % 2 == 1:
        x = layers.max_pool(x, 2)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class SimpleCNN(nn.Module):
  """Two convolutions and three dense layers; see the module docstring."""

  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # No BatchNorm; accepted for the contract.
  widths: Sequence[int] = (8, 16)
  hidden: Sequence[int] = (128, 32)
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    x = nn.relu(conv(self.widths[0], (5, 5), padding="VALID", dtype=self.dtype)(x))
    x = layers.max_pool(x, 2)
    x = nn.relu(conv(self.widths[1], (3, 3), padding="VALID", dtype=self.dtype)(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for features in self.hidden:
      x = nn.relu(nn.Dense(features, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class DeepCNN(nn.Module):
  """Eight valid 3x3 convolutions and a five-layer head; see the module docstring.

  ``widths`` are the eight conv widths (max-pool after the fourth, BatchNorm
  after the first and fifth) and ``hidden`` the four hidden dense widths.
  """

  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  widths: Sequence[int] = (20, 24, 32, 40, 48, 56, 64, 72)
  hidden: Sequence[int] = (256, 64, 32, 16)
  dropout_rates: Sequence[float] = (0.3, 0.1)
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.widths) != 8 or len(self.hidden) != 4:
      raise ValueError("deep_cnn needs 8 conv widths and 4 hidden widths")
    norm = functools.partial(
      layers.batch_norm, train, self.dtype, self.bn_axis_name, use_affine=False
    )
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    for i, features in enumerate(self.widths):
      x = conv(features, (3, 3), padding="VALID", dtype=self.dtype)(x)
      if i in (0, 4):
        x = norm()(x)
      x = nn.relu(x)
      if i == 3:
        x = layers.max_pool(x, 2)
    x = x.reshape((x.shape[0], -1))  # (B, 4*4*72 = 1152) at the defaults
    x = nn.Dense(self.hidden[0], dtype=self.dtype)(x)
    x = nn.relu(norm()(x))
    x = nn.Dropout(self.dropout_rates[0], deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden[1], dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(self.hidden[2], dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rates[1], deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden[3], dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("my_cnn", SixConvNet)
models.register("simple_cnn", SimpleCNN)
models.register("deep_cnn", DeepCNN)
