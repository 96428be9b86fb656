"""oneDNN convolutions (cifar_jax/cpu_conv.py): the extension matches the
running jaxlib, values and gradients equal XLA's within what float32 (and
bf16) arithmetic allows on any instruction set, the same training steps, and
XLA for what they do not cover. tests/precision_test.py covers the choice."""

import functools
import platform
import re
import sys
import types

import jax
import jax.numpy as jnp
import jaxlib
import models_test
import numpy as np
import pytest
from conftest import UNDER_ISA_LIMIT
from conftest import make_split
from conftest import run_tests_under_avx2
from jax import lax
from train_test import _run_steps
from train_test import tiny_resnet_config

from cifar_jax import cpu_conv
from cifar_jax import models
from cifar_jax import precision

NHWC = ("NHWC", "HWIO", "NHWC")
BUILDS_EXTENSION = sys.platform == "linux" and platform.machine() == "x86_64"


def test_extension_loads_where_it_is_built():
  if not BUILDS_EXTENSION:
    pytest.skip("the oneDNN extension is only built on Linux x86-64")
  assert cpu_conv.available(), cpu_conv.unavailable_reason()


def test_extension_was_built_for_the_running_jaxlib():
  if not cpu_conv.available():
    pytest.skip(f"oneDNN extension not built here: {cpu_conv.unavailable_reason()}")
  assert cpu_conv._extension.JAXLIB_VERSION == jaxlib.__version__


def test_extension_for_another_jaxlib_is_refused_with_how_to_rebuild(monkeypatch):
  fake = types.SimpleNamespace(JAXLIB_VERSION="0.0.1")
  monkeypatch.setattr(cpu_conv, "_extension", None)
  monkeypatch.setattr(cpu_conv, "_load_error", None)
  monkeypatch.setattr(cpu_conv, "_preload_onednn", lambda: None)
  monkeypatch.setattr(cpu_conv, "_load", lambda: fake)
  assert not cpu_conv.available()
  reason = cpu_conv.unavailable_reason()
  assert f"built against jaxlib 0.0.1, but jaxlib {jaxlib.__version__} is running" in reason
  assert "--no-build-isolation" in reason
  assert cpu_conv.cpu_isa() is None
  compute = precision.choose(_config("auto", False), num_devices=1, parallel="jit")
  assert compute.conv == "xla" and "0.0.1" in compute.notice


def _config(conv_backend, half_precision):
  from cifar_jax.configs import base

  config = base.get_config()
  config.conv_backend, config.half_precision = conv_backend, half_precision
  return config


needs_onednn = pytest.mark.skipif(
  not cpu_conv.available(), reason="oneDNN extension not built here"
)
ONEDNN = cpu_conv.onednn_conv_general_dilated
ONEDNN_FP32 = cpu_conv.onednn_fp32_conv_general_dilated
F32_EPS = 2.0**-24  # unit roundoff of float32
BF16_EPS = 2.0**-8  # of bfloat16, rounding to nearest (2**-9), doubled for safety
# Calls per geometry: a kernel that races between its threads (as oneDNN 3.2's
# strided 1x1 backward-weights on AVX2 did, about 1 call in 4) shows up.
REPEATS = 30


def _conv(impl, x, w, strides, padding):
  groups = x.shape[3] // w.shape[2]  # > 1: grouped, depthwise at one input channel each
  return impl(x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups)


def _outputs(impl, x, w, dy, strides, padding):
  """y = conv(x, w) and (dx, dw) = the VJP of the convolution at cotangent dy."""
  y, vjp = jax.vjp(lambda x, w: _conv(impl, x, w, strides, padding), x, w)
  return (y, *vjp(dy))


def _fp32_error_bounds(x, w, dy, strides, padding):
  """Elementwise bounds on |oneDNN - XLA| for y, dx and dw in float32.

  Each output is a sum of n products; any order of float32 accumulation is
  within n * eps * sum|products| of the exact value (Higham's gamma_n), so two
  implementations are within twice that of each other, whatever kernels and
  orders the instruction set leads them to. The sums of |products| are the
  same convolution and VJP on absolute values.
  """
  kh, kw, cin, cout = w.shape
  y_abs, dx_abs, dw_abs = _outputs(
    lax.conv_general_dilated, jnp.abs(x), jnp.abs(w), jnp.abs(dy), strides, padding
  )
  n_y, n_dx, n_dw = kh * kw * cin, kh * kw * cout, dy.shape[0] * dy.shape[1] * dy.shape[2]
  return [
    2 * n * F32_EPS * np.asarray(a) + 1e-30
    for n, a in ((n_y, y_abs), (n_dx, dx_abs), (n_dw, dw_abs))
  ]


def _assert_within(got, want, bound, what):
  excess = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) - bound
  worst = np.unravel_index(np.argmax(excess), excess.shape)
  assert excess.max() <= 0, (
    f"{what}: |got - want| exceeds the bound by {excess.max():.3g} "
    f"at {worst} (bound {bound[worst]:.3g})"
  )


GEOMETRIES = [
  ((4, 8, 8, 3), (3, 3, 3, 5), (1, 1), "SAME"),
  ((4, 9, 9, 6), (3, 3, 6, 4), (2, 2), "SAME"),  # odd size, stride 2
  ((2, 32, 32, 3), (5, 5, 3, 6), (1, 1), "VALID"),  # lenet's first layer
  ((3, 8, 8, 4), (1, 1, 4, 7), (2, 2), "VALID"),  # resnet shortcut
  ((2, 10, 10, 4), (3, 3, 4, 4), (1, 2), ((2, 0), (1, 3))),  # uneven explicit pads
  ((2, 8, 8, 3), (2, 2, 3, 8), (2, 2), "VALID"),  # patch embedding
  ((8, 16, 16, 64), (3, 3, 64, 64), (1, 1), "SAME"),  # long reductions
  ((4, 9, 9, 16), (3, 3, 1, 16), (1, 1), "SAME"),  # depthwise (mobilenet_v2)
  ((4, 9, 9, 16), (3, 3, 1, 16), (2, 2), "SAME"),  # depthwise, stride 2
  ((2, 8, 8, 8), (5, 5, 1, 16), (2, 2), ((2, 2), (2, 2))),  # depthwise x2, 5x5
  ((2, 8, 8, 16), (3, 3, 4, 8), (1, 1), "SAME"),  # 4 groups of 4 -> 2
]


def _operands(x_shape, w_shape, strides, padding, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  y_shape = jax.eval_shape(lambda: _conv(lax.conv_general_dilated, x, w, strides, padding)).shape
  dy = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
  return x, w, dy


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", GEOMETRIES)
def test_onednn_matches_xla_values_and_gradients(x_shape, w_shape, strides, padding):
  """float32: y, dx and dw within the accumulation-error bound of XLA's."""
  x, w, dy = _operands(x_shape, w_shape, strides, padding)
  want = jax.jit(
    functools.partial(_outputs, lax.conv_general_dilated, strides=strides, padding=padding)
  )(x, w, dy)
  onednn = jax.jit(functools.partial(_outputs, ONEDNN, strides=strides, padding=padding))
  bounds = _fp32_error_bounds(x, w, dy, strides, padding)
  for _ in range(REPEATS):
    got = onednn(x, w, dy)
    for name, g, r, b in zip(("y", "dx", "dw"), got, want, bounds):
      assert g.dtype == jnp.float32
      _assert_within(g, r, b, name)


def _bf16_implementations():
  impls = [pytest.param(ONEDNN_FP32, id="onednn_fp32")]
  if cpu_conv.supports("bf16"):
    impls.append(pytest.param(ONEDNN, id="onednn_bf16"))
  return impls


@needs_onednn
@pytest.mark.parametrize("impl", _bf16_implementations())
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", GEOMETRIES[1::3])
def test_bfloat16_convolution_is_the_float32_one_rounded(impl, x_shape, w_shape, strides, padding):
  """bf16 in, float32 accumulation, bf16 out: within one bf16 rounding of the
  float32 result on the same (bf16) operands, plus the float32 bound. Runs
  natively in bf16 where oneDNN can (AVX-512-BF16, AMX) and, everywhere, in
  float32 with bf16 in and out (what AVX2-only CPUs get)."""
  x, w, dy = (a.astype(jnp.bfloat16) for a in _operands(x_shape, w_shape, strides, padding, 1))
  got = jax.jit(functools.partial(_outputs, impl, strides=strides, padding=padding))(x, w, dy)
  x32, w32, dy32 = (a.astype(jnp.float32) for a in (x, w, dy))
  want = _outputs(lax.conv_general_dilated, x32, w32, dy32, strides, padding)
  bounds = _fp32_error_bounds(x32, w32, dy32, strides, padding)
  for name, g, r, b in zip(("y", "dx", "dw"), got, want, bounds):
    assert g.dtype == jnp.bfloat16, name
    _assert_within(g.astype(jnp.float32), r, BF16_EPS * np.abs(np.asarray(r)) + 2 * b, name)


def _lowered(impl=ONEDNN, conv_dtype=jnp.float32, **kwargs):
  x = jnp.ones((2, 8, 8, 4), conv_dtype)
  w = jnp.ones((3, 3, 4 // kwargs.get("feature_group_count", 1), 4), conv_dtype)
  fn = lambda x, w: impl(x, w, (1, 1), "SAME", dimension_numbers=NHWC, **kwargs)  # noqa: E731
  return jax.jit(fn).lower(x, w).as_text()


@needs_onednn
def test_only_covered_convolutions_go_to_onednn():
  assert "OnednnConvForward" in _lowered()
  assert "OnednnConvForward" in _lowered(conv_dtype=jnp.bfloat16)
  assert "OnednnConvForward" not in _lowered(  # bf16 in, f32 out: XLA
    conv_dtype=jnp.bfloat16, preferred_element_type=jnp.float32
  )
  assert "OnednnConvForward" in _lowered(feature_group_count=2)  # grouped
  assert "OnednnConvForward" in _lowered(feature_group_count=4)  # depthwise
  assert "OnednnConvForward" not in _lowered(rhs_dilation=(2, 2))  # dilated: XLA
  assert "OnednnConvForward" not in _lowered(lax.conv_general_dilated)
  # bf16 operands of the fp32 implementation reach oneDNN as float32.
  call = [
    line
    for line in _lowered(ONEDNN_FP32, conv_dtype=jnp.bfloat16).splitlines()
    if "OnednnConvForward" in line
  ]
  assert call and "xf32>" in call[0] and "bf16" not in call[0], call


@needs_onednn
@pytest.mark.parametrize("mode,num_devices", [("jit", 1), ("pmap", 4)])
def test_training_steps_match_xla(tiny_config, mode, num_devices):
  """A small BatchNorm ResNet trained 3 steps with oneDNN convolutions (one
  device, or one program per device under pmap) tracks the XLA run."""
  config = tiny_resnet_config(tiny_config)
  split = make_split(3 * config.batch_size, learnable=True)
  want_losses, want_params = _run_steps(config, "jit", 1, split)
  losses, params = _run_steps(
    config, mode, num_devices, split, compute=precision.Compute(jnp.float32, "onednn")
  )
  assert np.isfinite(want_losses).all()
  np.testing.assert_allclose(losses, want_losses, rtol=2e-4)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5), params, want_params
  )


@needs_onednn
@pytest.mark.parametrize("name", models.model_names())
def test_every_model_sends_its_plain_convolutions_to_onednn(name):
  """A model that builds a convolution from `nn.Conv` instead of the conv it
  is given silently trains at XLA's speed: given oneDNN's, no XLA
  convolution remains, grouped (depthwise) ones included."""
  model = models_test.small_model(name, conv_general_dilated=ONEDNN)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  apply = lambda v, x: model.apply(
    v,
    x,
    train=True,
    mutable=True,  # noqa: E731
    rngs={"dropout": jax.random.key(1)},
  )
  text = jax.jit(apply).lower(variables, x).as_text()
  groups = [int(g) for g in re.findall(r"feature_group_count = (\d+)", text)]
  assert not groups, f"{name}: {len(groups)} XLA convolution(s), groups {sorted(set(groups))}"
  assert "OnednnConvForward" in text


@needs_onednn
@pytest.mark.skipif(UNDER_ISA_LIMIT, reason="this is the run under ONEDNN_MAX_CPU_ISA")
def test_the_value_tests_hold_under_avx2_too():
  """oneDNN picks other kernels and accumulation orders per instruction set:
  the same value and gradient tests, in a process limited to AVX2."""
  stdout = run_tests_under_avx2(__file__, "matches_xla_values or float32_one_rounded")
  # Every geometry, and the bf16 ones in float32 (no native bf16 under AVX2).
  expected = len(GEOMETRIES) + len(GEOMETRIES[1::3])
  assert re.search(rf"\b{expected} passed\b", stdout), stdout[-500:]
