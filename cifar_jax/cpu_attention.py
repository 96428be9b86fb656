"""Multi-head attention on CPU through oneDNN, for ViT and Swin.

XLA:CPU runs attention's many small batched products about 1.8x slower than
PyTorch's bmm (ViT-Ti at batch 128: 384 products of 65x64 matrices per
layer), and moves qkv to and from the heads-major layout its batched dot
needs. The oneDNN extension (`cifar_jax._onednn_conv`, source in
cifar_jax/csrc/onednn_attention.cc) has two XLA FFI handlers that compute the
attention of each (batch entry, head) pair as one task, in parallel over all
pairs, with oneDNN's GEMM reading the fused projection in place and oneDNN's
softmax; this module wraps them in a custom VJP.

`onednn_attention` has the signature of `layers.xla_attention` and computes
the same function: the logits, softmax and its gradient in float32; bfloat16
operands are widened to float32 inside (the XLA form multiplies the weights by
the values in bfloat16, so bf16 runs agree to bf16 rounding). Calls it does
not cover (attention-weight dropout, other shapes or dtypes) go to
`layers.xla_attention`. A model is given one of `IMPLEMENTATIONS` as its
`attention` field; `cifar_jax.precision` picks oneDNN's wherever it picks the
oneDNN convolutions.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax import cpu_conv
from cifar_jax.models import layers


def _call(name: str, results, *operands, scale: float):
  return jax.ffi.ffi_call(name, results, vmap_method="sequential")(
    *operands, scale=np.float32(scale)
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _attention(qkv: jax.Array, bias: jax.Array, scale: float) -> jax.Array:
  return _attention_forward(qkv, bias, scale)[0]


def _attention_forward(qkv, bias, scale):
  b, n, _, h, d = qkv.shape
  out, probs = _call(
    "OnednnAttentionForward",
    (
      jax.ShapeDtypeStruct((b, n, h, d), qkv.dtype),
      jax.ShapeDtypeStruct((b, h, n, n), jnp.float32),
    ),
    qkv,
    bias,
    scale=scale,
  )
  return out, (qkv, probs, bias)


def _attention_backward(scale, residuals, dout):
  qkv, probs, bias = residuals
  dqkv, dbias = _call(
    "OnednnAttentionBackward",
    (
      jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),
      jax.ShapeDtypeStruct(bias.shape, jnp.float32),
    ),
    qkv,
    probs,
    dout.astype(qkv.dtype),
    scale=scale,
  )
  return dqkv, dbias


_attention.defvjp(_attention_forward, _attention_backward)


def _covered(qkv: jax.Array, bias: jax.Array | None) -> bool:
  if qkv.ndim != 5 or qkv.shape[2] != 3 or 0 in qkv.shape:
    return False
  if qkv.dtype not in (jnp.float32, jnp.bfloat16):
    return False
  if bias is None:
    return True
  b, n, _, h, _ = qkv.shape
  nb = bias.shape[0] if bias.ndim == 4 else 0
  return nb > 0 and b % nb == 0 and bias.shape[1:] == (h, n, n)


def onednn_attention(
  qkv: jax.Array,
  bias: jax.Array | None,
  *,
  scale: float,
  weights_dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """`layers.xla_attention`, computed by oneDNN where covered."""
  if weights_dropout is not None or not _covered(qkv, bias):
    return layers.xla_attention(qkv, bias, scale=scale, weights_dropout=weights_dropout)
  if not cpu_conv.available():  # registers the handlers, once
    raise RuntimeError(f"oneDNN attention is unavailable: {cpu_conv.unavailable_reason()}")
  _, n, _, h, _ = qkv.shape
  if bias is None:
    bias = jnp.zeros((0, h, n, n), jnp.float32)
  return _attention(qkv, bias.astype(jnp.float32), float(scale))


# The attention implementations a model can be given, by the name of the
# convolution family `cifar_jax.precision` settles on.
IMPLEMENTATIONS: dict[str, layers.AttentionFn] = {
  "xla": layers.xla_attention,
  "onednn": onednn_attention,
}
