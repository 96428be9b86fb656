"""ResNet under a parameter budget: every macro design choice is a field.

The search space of "ResNets with fewer than 5M parameters" studies: the
number of residual stages N (``len(stage_sizes)``), blocks per stage B_i
(``stage_sizes``), channels per stage C_i (``widths``), conv kernel size per
stage F_i (``kernel_sizes``), skip-connection kernel size per stage K_i
(``skip_kernel_sizes``, used by the projection shortcut of a stage's first
block) and the average-pool kernel P before the classifier (``pool_size``).
The blocks are ``resnet.BasicBlock`` (generalised there with kernel sizes).

Built for 32x32 inputs like the CIFAR ResNets in resnet.py: a 3x3 stride-1
stem to C_1 channels and no max-pool; stage i > 0 halves the resolution in its
first block, so the last stage sees 32 / 2**(N-1) pixels. The last map is
average-pooled with a PxP kernel (stride P) and flattened, so the classifier
has C_N * (32 / 2**(N-1) / P)**2 inputs.

Default design (4,697,162 parameters, under 5,000,000): N = 3 stages of
B = (4, 4, 3) blocks with C = (64, 128, 256) channels, 3x3 convolutions, 1x1
skip projections and an 8x8 average pool over the final 8x8 map (global
pooling). It is ResNet18's block type without the 512-channel stage (8.4M of
ResNet18's 11.2M parameters) and with the budget spent on depth instead:
4 + 4 + 3 blocks (22 weighted conv layers) against ResNet18's 2 + 2 + 2.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax import models
from cifar_jax.models import layers
from cifar_jax.models.resnet import BasicBlock


class ResNetBudget(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  stage_sizes: Sequence[int] = (4, 4, 3)
  widths: Sequence[int] = (64, 128, 256)
  kernel_sizes: Sequence[int] = (3, 3, 3)
  skip_kernel_sizes: Sequence[int] = (1, 1, 1)
  pool_size: int = 8
  dropout_rate: float = 0.0
  activation: str = "relu"
  conv_general_dilated: layers.ConvFn = layers.xla_conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = len(self.stage_sizes)
    if not (len(self.widths) == len(self.kernel_sizes) == len(self.skip_kernel_sizes) == n):
      raise ValueError(
        "stage_sizes, widths, kernel_sizes and skip_kernel_sizes need one "
        f"entry per stage; got {self.stage_sizes}, {self.widths}, "
        f"{self.kernel_sizes}, {self.skip_kernel_sizes}"
      )
    norm = functools.partial(layers.batch_norm, train, self.dtype, self.bn_axis_name)
    act = layers.activation(self.activation)
    conv = layers.conv_module(self.conv_general_dilated)
    x = x.astype(self.dtype)
    x = conv(self.widths[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
    x = act(norm()(x))
    for stage in range(n):
      for b in range(self.stage_sizes[stage]):
        strides = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(
          self.widths[stage],
          strides,
          norm,
          act,
          kernel_size=self.kernel_sizes[stage],
          skip_kernel_size=self.skip_kernel_sizes[stage],
          conv=conv,
        )(x)
    if self.pool_size > x.shape[1]:
      raise ValueError(
        f"pool_size {self.pool_size} exceeds the final {x.shape[1]}x{x.shape[2]} map"
      )
    x = nn.avg_pool(x, (self.pool_size, self.pool_size), strides=(self.pool_size, self.pool_size))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


models.register("resnet_budget", ResNetBudget)
