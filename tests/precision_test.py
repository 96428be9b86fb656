"""The per-machine choice of precision and convolutions (cifar_jax/precision.py):
what each kind of machine gets, the one-line notice, and the errors."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
from conftest import FAST_COMPILE_FLAGS
from conftest import REPO_ROOT

from cifar_jax import cpu_conv
from cifar_jax import precision
from cifar_jax.configs import base

AVX2 = precision.Machine("cpu", "avx2", False, None, onednn_f32=True, onednn_bf16=False)
ZEN4 = precision.Machine("cpu", "avx512_core_bf16", True, None, onednn_f32=True, onednn_bf16=True)
NO_EXTENSION = precision.Machine("cpu", "avx2", False, "ImportError: no module")
GPU = precision.Machine("gpu", "", True, None)


def _choose(machine, half_precision=False, conv_backend="auto", num_devices=1, parallel="jit"):
  config = base.get_config()
  config.half_precision = half_precision
  config.conv_backend = conv_backend
  return precision.choose(config, num_devices=num_devices, parallel=parallel, machine=machine)


def test_auto_is_bf16_only_where_native():
  avx2 = _choose(AVX2, "auto")
  assert (avx2.dtype, avx2.conv) == (jnp.float32, "onednn")
  assert avx2.notice == (
    "Compute: float32, oneDNN convolutions; half_precision=auto: "
    "this CPU (avx2) has no native bf16."
  )
  zen4 = _choose(ZEN4, "auto")
  assert (zen4.dtype, zen4.conv) == (jnp.bfloat16, "onednn")
  assert "this CPU (avx512_core_bf16) has native bf16" in zen4.notice
  gpu = _choose(GPU, "auto")
  assert (gpu.dtype, gpu.conv) == (jnp.bfloat16, "xla")
  assert "this GPU has native bf16" in gpu.notice


def test_explicit_bf16_without_native_bf16_runs_bf16_in_fp32_convolutions():
  compute = _choose(AVX2, True)
  assert (compute.dtype, compute.conv) == (jnp.bfloat16, "onednn_fp32")
  assert compute.conv_general_dilated is cpu_conv.onednn_fp32_conv_general_dilated
  assert "oneDNN convolutions in float32 with bf16 in and out" in compute.notice
  assert "has no native bf16" in compute.notice and "auto picks float32" in compute.notice
  native = _choose(ZEN4, True)
  assert (native.dtype, native.conv) == (jnp.bfloat16, "onednn")
  assert native.conv_general_dilated is cpu_conv.onednn_conv_general_dilated


def test_auto_backend_takes_xla_where_onednn_cannot_serve_and_says_why():
  assert _choose(AVX2, num_devices=4, parallel="pmap").conv == "onednn"
  jit4 = _choose(AVX2, num_devices=4, parallel="jit")
  assert jit4.conv == "xla" and "parallel=jit over 4 devices" in jit4.notice
  missing = _choose(NO_EXTENSION)
  assert missing.conv == "xla" and "does not load (ImportError: no module)" in missing.notice
  assert _choose(GPU).conv == "xla"
  xla = _choose(ZEN4, conv_backend="xla")
  assert xla.conv == "xla" and xla.conv_general_dilated is cpu_conv.IMPLEMENTATIONS["xla"]
  assert "conv_backend=xla" in xla.notice


def test_onednn_that_cannot_be_honoured_fails_with_what_to_change():
  with pytest.raises(ValueError, match=r"parallel=pmap or one device.*conv_backend=auto \(oneDNN"):
    _choose(AVX2, conv_backend="onednn", num_devices=4, parallel="jit")
  with pytest.raises(ValueError, match="CPUs only"):
    _choose(GPU, conv_backend="onednn")
  no_kernels = precision.Machine("cpu", "sse41", False, None, onednn_f32=False)
  with pytest.raises(ValueError, match=r"instruction set \(sse41; is ONEDNN_MAX_CPU_ISA"):
    _choose(no_kernels, conv_backend="onednn")
  assert _choose(no_kernels).conv == "xla"


def test_bad_values_are_named():
  with pytest.raises(ValueError, match="half_precision must be True, False or 'auto', not 'yes'"):
    _choose(AVX2, "yes")
  with pytest.raises(ValueError, match="conv_backend must be one of auto, onednn, xla"):
    _choose(AVX2, conv_backend="cudnn")


def test_xla_form_is_float32_xla():
  assert precision.XLA_FORM.dtype == jnp.float32
  assert precision.XLA_FORM.conv_general_dilated is cpu_conv.IMPLEMENTATIONS["xla"]


@pytest.mark.skipif(not cpu_conv.available(), reason="oneDNN extension not built here")
def test_onednn_max_cpu_isa_avx2_makes_this_machine_a_no_bf16_one():
  """What `Machine.detect` reads honours ONEDNN_MAX_CPU_ISA, which is how the
  AVX2 path is tested on AVX-512 machines."""
  code = (
    "from cifar_jax import precision; m = precision.Machine.detect(); "
    "print(m.cpu_isa, m.native_bf16, m.onednn_f32, m.onednn_bf16)"
  )
  env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": FAST_COMPILE_FLAGS}
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    cwd=REPO_ROOT,
    timeout=120,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.split()
  assert out == ["avx2", "False", "True", "False"]
