"""oneDNN convolutions (cifar_jax/cpu_conv.py): same values and gradients as
XLA's, the same training steps, fallbacks for what they do not cover, and the
backend choice with its errors."""
import platform
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cifar_jax import cpu_conv
from cifar_jax import models
from cifar_jax import parallel
from cifar_jax import train
from conftest import make_split
from train_test import _run_steps, tiny_resnet_config
import models_test

NHWC = ("NHWC", "HWIO", "NHWC")
BUILDS_EXTENSION = sys.platform == "linux" and platform.machine() == "x86_64"


def test_extension_loads_where_it_is_built():
  if not BUILDS_EXTENSION:
    pytest.skip("the oneDNN extension is only built on Linux x86-64")
  assert cpu_conv.available(), cpu_conv.unavailable_reason()


needs_onednn = pytest.mark.skipif(not cpu_conv.available(),
                                  reason="oneDNN extension not built here")


def _value_and_grads(conv, x, w, strides, padding):
  loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=NHWC)))  # noqa: E731
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", [
    ((4, 8, 8, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    ((4, 9, 9, 6), (3, 3, 6, 4), (2, 2), "SAME"),            # odd size, stride 2
    ((2, 32, 32, 3), (5, 5, 3, 6), (1, 1), "VALID"),         # lenet's first layer
    ((3, 8, 8, 4), (1, 1, 4, 7), (2, 2), "VALID"),           # resnet shortcut
    ((2, 10, 10, 4), (3, 3, 4, 4), (1, 2), ((2, 0), (1, 3))),  # uneven explicit pads
    ((2, 8, 8, 3), (2, 2, 3, 8), (2, 2), "VALID"),           # patch embedding
])
def test_onednn_matches_xla_values_and_gradients(x_shape, w_shape, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  want_y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  want_loss, (want_dx, want_dw) = _value_and_grads(lax.conv_general_dilated, x, w, strides, padding)
  with cpu_conv.use_onednn(True):
    got_y = jax.jit(lambda x, w: cpu_conv.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC))(x, w)
    got_loss, (got_dx, got_dw) = _value_and_grads(cpu_conv.conv_general_dilated, x, w,
                                                  strides, padding)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_dw, want_dw, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_bfloat16_convolution_matches_float32_to_bf16_precision():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 16, 16, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 16)) * 0.1, jnp.float32)
  _, want = _value_and_grads(lax.conv_general_dilated, x, w, (1, 1), "SAME")
  with cpu_conv.use_onednn(True):
    y = cpu_conv.conv_general_dilated(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                      (1, 1), "SAME", dimension_numbers=NHWC)
    _, got = _value_and_grads(cpu_conv.conv_general_dilated, x.astype(jnp.bfloat16),
                              w.astype(jnp.bfloat16), (1, 1), "SAME")
  assert y.dtype == jnp.bfloat16
  for g, r in zip(got, want):
    assert g.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(g.astype(jnp.float32) - r))) < 0.02 * float(jnp.max(jnp.abs(r)))


def _lowered(conv_dtype=jnp.float32, **kwargs):
  x = jnp.ones((2, 8, 8, 4), conv_dtype)
  w = jnp.ones((3, 3, 4 // kwargs.get("feature_group_count", 1), 4), conv_dtype)
  fn = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,  # noqa: E731
                                                  **kwargs)
  return jax.jit(fn).lower(x, w).as_text()


@needs_onednn
def test_only_covered_convolutions_go_to_onednn():
  with cpu_conv.use_onednn(True):
    assert "OnednnConvForward" in _lowered()
    assert "OnednnConvForward" in _lowered(jnp.bfloat16)
    assert "OnednnConvForward" not in _lowered(  # bf16 in, f32 out: XLA
        jnp.bfloat16, preferred_element_type=jnp.float32)
    assert "OnednnConvForward" not in _lowered(feature_group_count=2)  # grouped: XLA
    assert "OnednnConvForward" not in _lowered(rhs_dilation=(2, 2))    # dilated: XLA
  with cpu_conv.use_onednn(False):
    assert "OnednnConvForward" not in _lowered()


@needs_onednn
@pytest.mark.parametrize("mode,num_devices", [("jit", 1), ("pmap", 4)])
def test_training_steps_match_xla(tiny_config, mode, num_devices):
  """A small BatchNorm ResNet trained 3 steps with oneDNN convolutions (one
  device, or one program per device under pmap) tracks the XLA run."""
  config = tiny_resnet_config(tiny_config)
  split = make_split(3 * config.batch_size, learnable=True)
  with cpu_conv.use_onednn(False):
    want_losses, want_params = _run_steps(config, "jit", 1, split)
  with cpu_conv.use_onednn(True):
    losses, params = _run_steps(config, mode, num_devices, split)
  assert np.isfinite(want_losses).all()
  np.testing.assert_allclose(losses, want_losses, rtol=2e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5),
               params, want_params)


@needs_onednn
def test_auto_uses_onednn_for_one_device_and_pmap_only():
  resolve = cpu_conv.resolve
  assert resolve("auto", platform="cpu", num_devices=1, parallel="jit")
  assert resolve("auto", platform="cpu", num_devices=4, parallel="pmap")
  assert not resolve("auto", platform="cpu", num_devices=4, parallel="jit")
  assert not resolve("auto", platform="gpu", num_devices=1, parallel="jit")
  assert not resolve("xla", platform="cpu", num_devices=1, parallel="jit")
  assert resolve("onednn", platform="cpu", num_devices=1, parallel="jit")


def test_impossible_choices_fail_with_what_to_do():
  with pytest.raises(ValueError, match="parallel=pmap or one device"):
    cpu_conv.resolve("onednn", platform="cpu", num_devices=4, parallel="jit")
  with pytest.raises(ValueError, match="CPUs only.*conv_backend=auto or xla"):
    cpu_conv.resolve("onednn", platform="gpu", num_devices=1, parallel="jit")
  with pytest.raises(ValueError, match="must be one of auto, onednn, xla"):
    cpu_conv.resolve("cudnn", platform="cpu", num_devices=1, parallel="jit")


def test_run_selects_backend_from_config(tiny_config):
  """`select_conv_backend` applies config.conv_backend for the run's layout."""
  one = parallel.DataParallel("jit", 1)
  four = parallel.DataParallel("jit", 4)
  tiny_config.conv_backend = "xla"
  assert train.select_conv_backend(tiny_config, one) == "xla" and not cpu_conv.enabled()
  tiny_config.conv_backend = "auto"
  assert train.select_conv_backend(tiny_config, four) == "xla"
  if cpu_conv.available():
    assert train.select_conv_backend(tiny_config, one) == "onednn" and cpu_conv.enabled()
  cpu_conv.configure("xla", num_devices=1, parallel="jit")


@needs_onednn
@pytest.mark.parametrize("name", models.model_names())
def test_every_model_sends_its_plain_convolutions_to_onednn(name):
  """A model that builds its convolutions from `nn.Conv` instead of
  `layers.Conv` silently trains at XLA's speed: only grouped (depthwise)
  convolutions may remain XLA convolutions when oneDNN is on."""
  model = models_test.small_model(name)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  apply = lambda v, x: model.apply(v, x, train=True, mutable=True,  # noqa: E731
                                   rngs={"dropout": jax.random.key(1)})
  with cpu_conv.use_onednn(True):
    text = jax.jit(apply).lower(variables, x).as_text()
  groups = [int(g) for g in re.findall(r"feature_group_count = (\d+)", text)]
  assert all(g > 1 for g in groups), f"{name}: {groups.count(1)} plain XLA convolution(s)"
  assert "OnednnConvForward" in text
