"""LeNet-5 (LeCun et al., 1998) for 3-channel 32x32 CIFAR images.

Adapted from the original 1-channel design: the first convolution takes 3
channels and ReLU replaces the scaled tanh, as the seed project did; with max
pooling this gives 62,006 parameters.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax import models
from cifar_jax.models import layers


class LeNet5(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # No BatchNorm; accepted for the contract.
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    for features in (6, 16):
      x = nn.relu(conv(features, (5, 5), padding="VALID", dtype=self.dtype)(x))
      x = layers.max_pool(x, 2)
    x = x.reshape((x.shape[0], -1))
    for features in (120, 84):
      x = nn.relu(nn.Dense(features, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("lenet5", LeNet5)
