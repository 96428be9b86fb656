"""oneDNN dense-layer products (cifar_jax/cpu_matmul.py): values and both
gradients equal `lax.dot_general`'s within float32 rounding, on any
instruction set, and what they do not cover goes to XLA."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import UNDER_ISA_LIMIT
from conftest import run_tests_under_avx2
from jax import lax

from cifar_jax import cpu_conv
from cifar_jax import cpu_matmul

needs_onednn = pytest.mark.skipif(
  not cpu_conv.available(), reason="oneDNN extension not built here"
)
DENSE = (((1,), (0,)), ((), ()))


def _dense(dot, x, w):
  return dot(x, w, (((x.ndim - 1,), (0,)), ((), ())))


SHAPES = [((8, 5), (5, 3)), ((2, 65, 192), (192, 576)), ((3, 1), (1, 7)), ((4, 4, 2, 9), (9, 16))]


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape", SHAPES)
def test_onednn_matches_xla_values_and_gradients(x_shape, w_shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  dy = jnp.asarray(rng.standard_normal(x_shape[:-1] + w_shape[1:]), jnp.float32)

  def outputs(dot):
    y, vjp = jax.vjp(lambda x, w: _dense(dot, x, w), x, w)
    return (y, *vjp(dy))

  want = outputs(lax.dot_general)
  got = jax.jit(lambda: outputs(cpu_matmul.onednn_dot_general))()
  rows = int(np.prod(x_shape[:-1]))
  for what, g, v, n in zip(("y", "dx", "dw"), got, want, (w_shape[0], w_shape[1], rows)):
    assert g.shape == v.shape and g.dtype == v.dtype, what
    # A sum of n float32 products, in another order (Higham's gamma_n, twice).
    tol = 2 * n * 2.0**-24 * np.asarray(outputs_abs(what, x, w, dy, n))
    assert np.all(np.abs(np.asarray(g) - np.asarray(v)) <= tol + 1e-30), what


def outputs_abs(what, x, w, dy, n):
  """The same product on absolute values: the sum of |terms| bounding the error."""
  y, vjp = jax.vjp(lambda x, w: _dense(lax.dot_general, x, w), jnp.abs(x), jnp.abs(w))
  return {"y": y, "dx": vjp(jnp.abs(dy))[0], "dw": vjp(jnp.abs(dy))[1]}[what]


@needs_onednn
def test_only_dense_float32_products_go_to_onednn():
  def lowered(x, w, dims=None, **kw):
    dims = dims or (((x.ndim - 1,), (0,)), ((), ()))
    fn = lambda x, w: cpu_matmul.onednn_dot_general(x, w, dims, **kw)  # noqa: E731
    return jax.jit(fn).lower(x, w).as_text()

  x, w = jnp.zeros((4, 3, 8)), jnp.zeros((8, 5))
  assert "OnednnMatmul" in lowered(x, w)
  assert "OnednnMatmul" not in lowered(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert "OnednnMatmul" not in lowered(x, w, preferred_element_type=jnp.bfloat16)
  # A batched product, or one contracting another dimension: XLA.
  assert "OnednnMatmul" not in lowered(
    jnp.zeros((5, 4, 8)), jnp.zeros((5, 8, 3)), (((2,), (1,)), ((0,), (0,)))
  )
  assert "OnednnMatmul" not in lowered(jnp.zeros((8, 4)), w, (((0,), (0,)), ((), ())))
  assert "OnednnMatmul" not in lowered(jnp.zeros((0, 8)), w)


@needs_onednn
@pytest.mark.skipif(UNDER_ISA_LIMIT, reason="this is the run under ONEDNN_MAX_CPU_ISA")
def test_the_value_tests_hold_under_avx2_too():
  """oneDNN's GEMM picks other kernels per instruction set."""
  stdout = run_tests_under_avx2(__file__, "matches_xla_values")
  assert re.search(rf"\b{len(SHAPES)} passed\b", stdout), stdout[-500:]
