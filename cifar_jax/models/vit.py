"""Vision Transformer (Dosovitskiy et al., 2021) adapted to 32x32 inputs.

Patch embedding (conv with kernel = stride = patch size), a learned class
token, learned position embeddings, pre-norm encoder blocks (LayerNorm ->
multi-head self-attention -> residual, LayerNorm -> MLP with GELU ->
residual), a final LayerNorm and a linear classifier on the class token.
``dropout_rate`` applies after the position embedding and inside the MLP and
attention projection, ``attn_dropout_rate`` to the attention weights and
``drop_path_rate`` is stochastic depth rising linearly over the blocks.

Adapted to 32x32: ImageNet ViTs use 16x16 patches (14x14 = 196 tokens); here
``patch_size`` = 4 gives 8x8 = 64 patch tokens + 1 class token. Widths and
heads follow DeiT-Ti/S (192 / 384, 3 / 6 heads, depth 12, MLP ratio 4).
Parameters with 10 classes: vit_tiny 5,362,762, vit_small 21,342,346 (with
patch 16, 224x224 and 1000 classes the same code gives timm's 5,717,416 /
22,050,664). The model is timm's ``vit_tiny/small_patch16_224`` (class-token
pooling, qkv bias, LayerNorm eps 1e-6, exact GELU): timm's model created with
``patch_size=4, img_size=32, num_classes=10`` computes the same function
(tests/reference_test.py), and with ``patch_size=16`` at 224x224 the stock one.

How the attention and the dense layers compute is given by the ``attention``
and ``dot_general`` fields (XLA's by default; `cifar_jax.cpu_attention` and
`cifar_jax.cpu_matmul` have the oneDNN ones, which compute the same function).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cifar_jax import models
from cifar_jax.models import layers
from cifar_jax.models.layers import DropPath

_dense_init = layers.transformer_dense_init
_LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6)


class SelfAttention(nn.Module):
  num_heads: int
  attn_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: layers.AttentionFn = layers.xla_attention
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.multi_head_attention(
      x,
      None,
      num_heads=self.num_heads,
      dtype=self.dtype,
      attention=self.attention,
      dot_general=self.dot_general,
      weights_dropout_rate=self.attn_dropout_rate,
      train=train,
    )
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class EncoderBlock(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attn_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: layers.AttentionFn = layers.xla_attention
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    # The blocks' LayerNorms hand their scale and shift to the dense layer after
    # them (layers.PendingAffine): same function and parameters, no broadcast.
    y = layers.DeferredLayerNorm(1e-6, self.dtype, name="LayerNorm_0")(x)
    y = SelfAttention(
      self.num_heads,
      self.attn_dropout_rate,
      self.dropout_rate,
      self.dtype,
      self.attention,
      self.dot_general,
    )(y, train)
    x = x + DropPath(self.drop_path_rate)(y, deterministic=not train)
    y = layers.DeferredLayerNorm(1e-6, self.dtype, name="LayerNorm_1")(x)
    y = layers.TransformerMlp(
      int(c * self.mlp_ratio), self.dropout_rate, self.dtype, self.dot_general
    )(y, train)
    return x + DropPath(self.drop_path_rate)(y, deterministic=not train)


class VisionTransformer(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # No BatchNorm; accepted for the contract.
  patch_size: int = 4
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attn_dropout_rate: float = 0.0
  drop_path_rate: float = 0.1
  conv_general_dilated: layers.ConvFn = layers.xla_conv
  attention: layers.AttentionFn = layers.xla_attention
  dot_general: layers.DotFn = layers.xla_dot

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    p = self.patch_size
    x = layers.conv_module(self.conv_general_dilated)(
      self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed"
    )(x)
    b = x.shape[0]
    x = x.reshape(b, -1, self.embed_dim)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.embed_dim))
    x = jnp.concatenate(
      [jnp.broadcast_to(cls, (b, 1, self.embed_dim)).astype(self.dtype), x], axis=1
    )
    pos = self.param("pos_embedding", _dense_init, (1, x.shape[1], self.embed_dim))
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    for i in range(self.depth):
      x = EncoderBlock(
        self.num_heads,
        self.mlp_ratio,
        self.dropout_rate,
        self.attn_dropout_rate,
        float(rates[i]),
        self.dtype,
        self.attention,
        self.dot_general,
        name=f"block{i}",
      )(x, train)
    x = _LayerNorm(dtype=self.dtype, name="norm")(x[:, 0])
    head = layers.transformer_dense(self.dot_general)
    return head(self.num_classes, dtype=self.dtype, name="head")(x)


models.register("vit_tiny", VisionTransformer)
models.register("vit_small", functools.partial(VisionTransformer, embed_dim=384, num_heads=6))
