"""The transformers' dense layers on CPU through oneDNN's GEMM.

At ViT-Ti's shapes (batch 128: 8320 tokens, 192 -> 768 features) oneDNN's
float32 GEMM runs ~1.3x faster than XLA:CPU's dot on the 2-core AVX2
development CPU, and it reads transposed operands in place, where XLA copies
the activations and output gradients of every weight gradient into the
transposed layout first. The extension's `OnednnMatmul` handler (source in
cifar_jax/csrc/onednn_matmul.cc) computes op(a) op(b) for 2-D float32
operands; `onednn_dot_general` has `lax.dot_general`'s signature, so it is an
`nn.Dense`'s `dot_general`, and computes a dense layer's product (inputs
(..., K) by kernel (K, N)) and both of its gradients with it. Other products
(batch dimensions, other contractions, other dtypes: bf16 stays on XLA, which
has native bf16 dots) go to `lax.dot_general`. A model is given one of
`IMPLEMENTATIONS` as its `dot_general` field; `cifar_jax.precision` picks
oneDNN's wherever it picks the oneDNN convolutions.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from cifar_jax import cpu_conv


def _call(a: jax.Array, b: jax.Array, transpose_a: bool, transpose_b: bool) -> jax.Array:
  m = a.shape[1] if transpose_a else a.shape[0]
  n = b.shape[0] if transpose_b else b.shape[1]
  result = jax.ShapeDtypeStruct((m, n), jnp.float32)
  return jax.ffi.ffi_call("OnednnMatmul", result, vmap_method="sequential")(
    a, b, transpose_a=transpose_a, transpose_b=transpose_b
  )


@jax.custom_vjp
def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """(M, K) @ (K, N) -> (M, N) in float32 by oneDNN, gradients too."""
  return _call(a, b, False, False)


def _matmul_forward(a, b):
  return _call(a, b, False, False), (a, b)


def _matmul_backward(residuals, g):
  a, b = residuals
  return _call(g, b, False, True), _call(a, g, True, False)


matmul.defvjp(_matmul_forward, _matmul_backward)


def _covered(lhs, rhs, dimension_numbers, preferred_element_type) -> bool:
  if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or rhs.ndim != 2 or lhs.ndim < 1:
    return False
  if preferred_element_type is not None and preferred_element_type != jnp.float32:
    return False
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if tuple(lhs_batch) or tuple(rhs_batch):
    return False
  if tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,):
    return False
  return 0 not in lhs.shape and 0 not in rhs.shape


def onednn_dot_general(
  lhs,
  rhs,
  dimension_numbers,
  precision=None,
  preferred_element_type=None,
  **kwargs,
):
  """`lax.dot_general`, computed by oneDNN for a dense layer's float32
  product (lhs (..., K) contracted with rhs (K, N))."""
  if kwargs or not _covered(lhs, rhs, dimension_numbers, preferred_element_type):
    return lax.dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
      **kwargs,
    )
  if not cpu_conv.available():  # registers the handlers, once
    raise RuntimeError(f"oneDNN matmul is unavailable: {cpu_conv.unavailable_reason()}")
  k, n = rhs.shape
  return matmul(lhs.reshape(-1, k), rhs).reshape(*lhs.shape[:-1], n)


# The dense-layer product implementations a model can be given, by the name of
# the convolution family `cifar_jax.precision` settles on.
IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
  "xla": lax.dot_general,
  "onednn": onednn_dot_general,
}
