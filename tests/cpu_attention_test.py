"""oneDNN attention (cifar_jax/cpu_attention.py): values and gradients equal
the XLA form's (`layers.xla_attention`) within float32 (and bf16) rounding on
any instruction set, with and without Swin's bias, the transformers compute
the same function and gradients with it, and what it does not cover goes to
XLA."""

import re

import jax
import jax.numpy as jnp
import models_test
import numpy as np
import pytest
from conftest import UNDER_ISA_LIMIT
from conftest import run_tests_under_avx2

from cifar_jax import cpu_attention
from cifar_jax import cpu_conv
from cifar_jax import cpu_matmul
from cifar_jax import models
from cifar_jax import precision
from cifar_jax import run as run_lib
from cifar_jax.configs import base
from cifar_jax.models import layers

needs_onednn = pytest.mark.skipif(
  not cpu_conv.available(), reason="oneDNN extension not built here"
)
ONEDNN = cpu_attention.onednn_attention
XLA = layers.xla_attention

# (batch, tokens, heads, head_dim, bias batch nb: 0 = no bias)
SHAPES = [
  (4, 17, 3, 16, 0),  # ViT: a class token and 4x4 patches
  (8, 16, 2, 8, 4),  # Swin: 2 images of 4 windows, a mask per window
  (6, 16, 2, 8, 1),  # Swin without shift: the relative-position bias only
  (3, 5, 1, 3, 3),  # odd sizes, a bias per batch entry
  (2, 65, 3, 64, 0),  # ViT-Ti's shapes at the CIFAR settings
]


def _operands(b, n, h, d, nb, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  qkv = jnp.asarray(rng.standard_normal((b, n, 3, h, d)), dtype)
  bias = jnp.asarray(rng.standard_normal((nb, h, n, n)), jnp.float32) if nb else None
  dout = jnp.asarray(rng.standard_normal((b, n, h, d)), dtype)
  return qkv, bias, dout


def _outputs(impl, qkv, bias, dout, scale):
  """The attention and its VJP at `dout`: (out, dqkv[, dbias])."""
  if bias is None:
    out, vjp = jax.vjp(lambda q: impl(q, None, scale=scale), qkv)
  else:
    out, vjp = jax.vjp(lambda q, b: impl(q, b, scale=scale), qkv, bias)
  return (out, *vjp(dout))


@needs_onednn
@pytest.mark.parametrize("b,n,h,d,nb", SHAPES)
def test_onednn_matches_xla_values_and_gradients(b, n, h, d, nb):
  qkv, bias, dout = _operands(b, n, h, d, nb)
  scale = d**-0.5
  want = _outputs(XLA, qkv, bias, dout, scale)
  got = jax.jit(lambda q, p, g: _outputs(ONEDNN, q, p, g, scale))(qkv, bias, dout)
  for what, g, w in zip(("out", "dqkv", "dbias"), got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, what
    # Sums of up to n (or batch * n) float32 products in another order.
    tol = 64 * max(n, b) * 2.0**-24 * float(jnp.max(jnp.abs(w)))
    np.testing.assert_allclose(g, w, rtol=0, atol=tol, err_msg=what)


@needs_onednn
@pytest.mark.parametrize("b,n,h,d,nb", SHAPES[:2])
def test_bfloat16_attention_is_the_float32_one_rounded(b, n, h, d, nb):
  """bf16 operands are widened and every product is float32: the result is
  the float32 attention of the same (bf16) numbers, rounded once to bf16."""
  qkv, bias, dout = _operands(b, n, h, d, nb, jnp.bfloat16)
  scale = d**-0.5
  f32 = lambda x: None if x is None else x.astype(jnp.float32)  # noqa: E731
  want = _outputs(XLA, f32(qkv), bias, f32(dout), scale)
  got = jax.jit(lambda q, p, g: _outputs(ONEDNN, q, p, g, scale))(qkv, bias, dout)
  assert got[0].dtype == got[1].dtype == jnp.bfloat16
  for what, g, w in zip(("out", "dqkv", "dbias"), got, want):
    tol = 2.0**-8 * np.abs(np.asarray(w)) + 1e-5 * float(jnp.max(jnp.abs(w)))
    assert np.all(np.abs(np.asarray(g, np.float32) - np.asarray(w)) <= tol), what


def _lowered(impl=ONEDNN, shape=(2, 4, 3, 2, 8), bias=None, dtype=jnp.float32, **kw):
  qkv = jnp.zeros(shape, dtype)
  return jax.jit(lambda q: impl(q, bias, scale=0.5, **kw)).lower(qkv).as_text()


@needs_onednn
def test_only_covered_attention_goes_to_onednn():
  assert "OnednnAttentionForward" in _lowered()
  assert "OnednnAttentionForward" in _lowered(dtype=jnp.bfloat16)
  assert "OnednnAttentionForward" in _lowered(bias=jnp.zeros((2, 2, 4, 4)))
  assert "OnednnAttentionForward" not in _lowered(dtype=jnp.float16)
  # Dropout on the attention weights needs them materialised: XLA.
  dropout = lambda w: w * 0.5  # noqa: E731
  assert "OnednnAttentionForward" not in _lowered(weights_dropout=dropout)
  assert "OnednnAttentionForward" not in _lowered(XLA)


@needs_onednn
@pytest.mark.parametrize("name", ["vit_tiny", "swin_tiny"])
def test_transformers_compute_the_same_with_the_onednn_kernels(name):
  """Logits and parameter gradients (train mode, stochastic depth on, Swin's
  shifted windows and masks) with oneDNN's attention and dense layers equal
  those with XLA's, and no XLA dot is left in the dense layers."""
  x = models_test.images(4)
  xla_model = models_test.small_model(name)
  onednn_model = models_test.small_model(
    name, attention=ONEDNN, dot_general=cpu_matmul.onednn_dot_general
  )
  variables = xla_model.init(jax.random.key(0), x, train=False)

  def loss(model):
    def fn(params):
      rngs = {"dropout": jax.random.key(1)}
      logits = model.apply({"params": params}, x, train=True, rngs=rngs)
      return jnp.sum(logits**2), logits

    return jax.jit(jax.grad(fn, has_aux=True))

  want_grads, want = loss(xla_model)(variables["params"])
  got_grads, got = loss(onednn_model)(variables["params"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_grads, want_grads
  )
  text = jax.jit(lambda v: onednn_model.apply(v, x)).lower(variables).as_text()
  assert "OnednnAttentionForward" in text and "OnednnMatmul" in text
  # What remains of XLA's dots: none of rank 2 x rank 2 (a dense layer's).
  dense_dots = re.findall(r"stablehlo.dot_general .*tensor<\d+x\d+xf32>, tensor<\d+x\d+xf32>", text)
  assert not dense_dots, dense_dots[:3]


def test_run_gives_the_transformers_the_computes_kernels():
  """`run.create_model` hands `Compute.attention` and `Compute.dot_general`
  to the models with an `attention` field (oneDNN's with the oneDNN
  convolutions) and to no other."""
  config = base.get_config()
  onednn = precision.Compute(jnp.float32, "onednn")
  assert onednn.attention is ONEDNN
  assert precision.Compute(jnp.bfloat16, "onednn_fp32").attention is ONEDNN
  assert precision.XLA_FORM.attention is XLA
  assert onednn.dot_general is cpu_matmul.onednn_dot_general
  assert precision.XLA_FORM.dot_general is layers.xla_dot
  for name in ("vit_tiny", "vit_small", "swin_tiny", "swin_small"):
    assert models.takes(name, "attention")
    config.model.name = name
    model = run_lib.create_model(config, onednn)
    assert model.attention is ONEDNN and model.dot_general is cpu_matmul.onednn_dot_general
    model = run_lib.create_model(config)
    assert model.attention is XLA and model.dot_general is layers.xla_dot
  assert not models.takes("resnet18", "attention")
  assert not models.takes("no_such_model", "attention")
  config.model.name = "resnet18"
  assert not hasattr(run_lib.create_model(config, onednn), "attention")


@needs_onednn
@pytest.mark.skipif(UNDER_ISA_LIMIT, reason="this is the run under ONEDNN_MAX_CPU_ISA")
def test_the_value_tests_hold_under_avx2_too():
  """oneDNN's GEMM and softmax pick other kernels per instruction set."""
  stdout = run_tests_under_avx2(__file__, "matches_xla_values or float32_one_rounded")
  expected = len(SHAPES) + 2
  assert re.search(rf"\b{expected} passed\b", stdout), stdout[-500:]
