"""Swin Transformer (Liu et al., 2021) adapted to 32x32 inputs.

Patch embedding (conv with kernel = stride = patch size, then LayerNorm), four
stages of Swin blocks with patch merging (2x2 neighbourhood concat, LayerNorm,
linear 4C -> 2C) between them, final LayerNorm, token average and classifier.
A Swin block is pre-norm window multi-head self-attention with a learned
relative position bias, then an MLP (ratio 4, GELU); every second block
cyclically shifts the map by half a window and masks attention between pixels
that were not adjacent before the shift. Stochastic depth rises linearly over
all blocks to ``drop_path_rate`` (0.2 tiny, 0.3 small, the official values).

Adapted to 32x32: ImageNet Swin uses 4x4 patches (56x56 tokens) and window 7.
Here ``patch_size`` = 2 gives 16x16 tokens and ``window_size`` = 4, so the
stages see 16x16, 8x8, 4x4 and 2x2 tokens. As in the official code, a stage
whose resolution is <= the window uses one window covering the whole map and
no shift: stage 3 (4x4, window 4) and stage 4 (2x2, window 2) are unshifted
global attention. Stages 1-2 use 4x4 windows shifted by 2. The relative
position bias tables therefore have (2*4-1)**2 = 49 rows in stages 1-3 and 9
in stage 4. Parameters with 10 classes: swin_tiny 27,505,108, swin_small
48,805,732 (with patch 4, window 7, 224x224 and 1000 classes the same code
gives the official 28,288,354 / 49,606,258). Tokens are kept as (B, H, W, C)
maps throughout.

The reference is torchvision's ``SwinTransformer`` (v1), which equals this
model in the ImageNet settings (``patch_size=4, window_size=7``). In the
CIFAR settings it equals torchvision's model with ``patch_size=[2, 2]``,
``window_size=[4, 4]`` and stage 4's attention given a 2x2 window (and its
49-row tables replaced by 9-row ones): where a map is smaller than the window,
torchvision keeps the window and zero-pads the map, attending to the padding
unmasked, while the official code, and this one, shrink the window to the
map. Stage 3 (4x4 tokens, window 4) is the same in both: one unshifted window
(tests/reference_test.py).

How the attention and the dense layers compute is given by the ``attention``
and ``dot_general`` fields (XLA's by default; `cifar_jax.cpu_attention` and
`cifar_jax.cpu_matmul` have the oneDNN ones, which compute the same function).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax import models
from cifar_jax.models import layers
from cifar_jax.models.layers import DropPath

_dense_init = layers.transformer_dense_init
_LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5)


def window_partition(x, window: int):
  """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
  """Inverse of ``window_partition``."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
  """(w*w, w*w) index into the (2w-1)**2-row relative position bias table."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """(num_windows, w*w, w*w) additive mask: -100 between pixels of different
  regions of the cyclically shifted map, 0 elsewhere."""
  img = np.zeros((1, h, w, 1), np.float32)
  regions = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  label = 0
  for hs in regions:
    for ws in regions:
      img[:, hs, ws, :] = label
      label += 1
  windows = window_partition(img, window)[..., 0]  # (nW, w*w)
  diff = windows[:, None, :] - windows[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  num_heads: int
  window_size: int
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: layers.AttentionFn = layers.xla_attention
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x: jax.Array | layers.PendingAffine, mask, train: bool):
    n = x.shape[1]
    table = self.param(
      "relative_position_bias_table", _dense_init, ((2 * self.window_size - 1) ** 2, self.num_heads)
    )
    index = relative_position_index(self.window_size).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)[None]
    if mask is not None:  # window w of every image (bw = images * nW) gets mask[w]
      bias = bias + mask[:, None]

    x = layers.multi_head_attention(
      x,
      bias,
      num_heads=self.num_heads,
      dtype=self.dtype,
      attention=self.attention,
      dot_general=self.dot_general,
      weights_dropout_rate=self.attn_drop_rate,
      train=train,
    )
    return nn.Dropout(self.proj_drop_rate, deterministic=not train)(x)


class SwinBlock(nn.Module):
  num_heads: int
  window_size: int
  shift_size: int
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: layers.AttentionFn = layers.xla_attention
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x, train: bool):
    _, h, w, c = x.shape
    window, shift = self.window_size, self.shift_size
    if min(h, w) <= window:  # one window covers the map: no shift (official code)
      window, shift = min(h, w), 0
    if h % window or w % window:
      raise ValueError(f"{h}x{w} tokens do not tile into {window}x{window} windows")

    # The LayerNorms hand their scale and shift to the dense layer after them
    # (layers.PendingAffine); the roll and the window partition move whole
    # tokens, so they commute with them.
    y = layers.DeferredLayerNorm(1e-5, self.dtype, name="LayerNorm_0")(x)
    if shift:
      y = y.map_tokens(lambda t: jnp.roll(t, (-shift, -shift), axis=(1, 2)))
      mask = jnp.asarray(shifted_window_mask(h, w, window, shift))
    else:
      mask = None
    y = WindowAttention(
      self.num_heads,
      window,
      self.attn_drop_rate,
      self.drop_rate,
      self.dtype,
      self.attention,
      self.dot_general,
    )(y.map_tokens(lambda t: window_partition(t, window)), mask, train)
    y = window_reverse(y, window, h, w)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + DropPath(self.drop_path_rate)(y, deterministic=not train)

    y = layers.DeferredLayerNorm(1e-5, self.dtype, name="LayerNorm_1")(x)
    y = layers.TransformerMlp(
      int(c * self.mlp_ratio), self.drop_rate, self.dtype, self.dot_general
    )(y, train)
    return x + DropPath(self.drop_path_rate)(y, deterministic=not train)


class PatchMerging(nn.Module):
  """2x2 neighbourhood -> 4C concat -> LayerNorm -> linear to 2C (no bias)."""

  dtype: Any = jnp.float32
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = jnp.concatenate(
      [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
    )
    x = _LayerNorm(dtype=self.dtype)(x)
    dense = layers.transformer_dense(self.dot_general)
    return dense(2 * c, use_bias=False, dtype=self.dtype)(x)


class SwinTransformer(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # No BatchNorm; accepted for the contract.
  patch_size: int = 2
  window_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.2
  conv_general_dilated: layers.ConvFn = layers.xla_conv
  attention: layers.AttentionFn = layers.xla_attention
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.depths) != len(self.num_heads):
      raise ValueError(
        f"depths {self.depths} and num_heads {self.num_heads} need one entry per stage"
      )
    x = x.astype(self.dtype)
    p = self.patch_size
    x = layers.conv_module(self.conv_general_dilated)(
      self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed"
    )(x)
    x = _LayerNorm(dtype=self.dtype, name="patch_norm")(x)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    block = 0
    for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      for i in range(depth):
        x = SwinBlock(
          heads,
          self.window_size,
          0 if i % 2 == 0 else self.window_size // 2,
          self.mlp_ratio,
          self.drop_rate,
          self.attn_drop_rate,
          float(rates[block]),
          self.dtype,
          self.attention,
          self.dot_general,
          name=f"stage{stage}_block{i}",
        )(x, train)
        block += 1
      if stage < len(self.depths) - 1:
        x = PatchMerging(self.dtype, self.dot_general, name=f"stage{stage}_merge")(x)
    x = _LayerNorm(dtype=self.dtype, name="norm")(x)
    x = jnp.mean(x, axis=(1, 2))
    head = layers.transformer_dense(self.dot_general)
    return head(self.num_classes, dtype=self.dtype, name="head")(x)


models.register("swin_tiny", SwinTransformer)
models.register(
  "swin_small", functools.partial(SwinTransformer, depths=(2, 2, 18, 2), drop_path_rate=0.3)
)
