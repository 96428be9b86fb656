"""Convolutions on CPU through oneDNN, the library PyTorch uses there.

XLA:CPU computes convolutions, and above all their weight gradients, several
times slower than oneDNN: at batch 128, a 3x3 64->64 conv on 32x32 maps
takes ~95 ms forward and ~280 ms for the kernel gradient on XLA against ~38
and ~31 ms in PyTorch on the same two cores. The C++ extension
`cifar_jax._onednn_conv` (source in cifar_jax/csrc) exposes oneDNN's forward,
backward-data and backward-weights primitives as XLA FFI handlers; this module
registers them and wraps them in a custom VJP with the exact signature of
`lax.conv_general_dilated`, so models pass `conv_general_dilated` to flax's
`nn.Conv` (see `models.layers.Conv`) and stay unchanged otherwise.

Which implementation runs is a process-wide choice made when a run starts
(`configure`, from `config.conv_backend`) and read while a step is traced.
Convolutions oneDNN does not cover here (grouped or dilated ones, mixed
dtypes, other layouts) always go to `lax.conv_general_dilated`, as does everything on
GPUs and TPUs. A custom call has no sharding rule, so under `parallel=jit`
with more than one device the choice falls back to XLA; `pmap` traces one
device's program and keeps oneDNN.

Set the environment variable CIFAR_JAX_ONEDNN_VERBOSE=1 to print, for each
new convolution geometry, the oneDNN kernel chosen for it (e.g.
``brgconv:avx512_core_bf16``): the way to see that bf16 runs on native
bf16 instructions.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BACKENDS = ("auto", "onednn", "xla")
_HANDLERS = ("OnednnConvForward", "OnednnConvBackwardData", "OnednnConvBackwardWeights")
_NHWC = ("NHWC", "HWIO", "NHWC")

_load_error: str | None = None
_loaded = False
_enabled = False


def _preload_onednn() -> None:
  """Loads libdnnl.so.3 from the `onednn-cpu-gomp` wheel (it installs into
  <prefix>/lib, not on the loader path) so the extension's link resolves."""
  dist = importlib.metadata.distribution("onednn-cpu-gomp")
  for f in dist.files or ():
    if str(f).endswith("libdnnl.so.3"):
      ctypes.CDLL(str(dist.locate_file(f)), mode=ctypes.RTLD_GLOBAL)
      return
  raise OSError("onednn-cpu-gomp does not contain libdnnl.so.3")


def available() -> bool:
  """Whether the oneDNN extension is built and loads; registers it once."""
  global _loaded, _load_error
  if _loaded or _load_error is not None:
    return _loaded
  try:
    _preload_onednn()
    from cifar_jax import _onednn_conv  # pylint: disable=import-outside-toplevel
    for name in _HANDLERS:
      jax.ffi.register_ffi_target(name, getattr(_onednn_conv, name), platform="cpu")
    _loaded = True
  except (ImportError, OSError, importlib.metadata.PackageNotFoundError) as e:
    _load_error = f"{type(e).__name__}: {e}"
  return _loaded


def unavailable_reason() -> str | None:
  return None if available() else _load_error


def resolve(backend: str, *, platform: str, num_devices: int, parallel: str) -> bool:
  """Whether convolutions should use oneDNN for a run with these settings.

  "auto" picks oneDNN when it can (CPU, extension built, one program per
  device); "onednn" insists and fails with the reason it cannot; "xla" never.
  """
  if backend not in BACKENDS:
    raise ValueError(f"conv_backend must be one of {', '.join(BACKENDS)}, not {backend!r}.")
  if backend == "xla":
    return False
  reasons = []
  if platform != "cpu":
    reasons.append(f"the backend is {platform}, and oneDNN here runs on CPUs only")
  if parallel == "jit" and num_devices > 1:
    reasons.append(f"parallel=jit over {num_devices} devices needs a sharding rule a "
                   "custom call does not have (use parallel=pmap or one device)")
  if not available():
    reasons.append(f"the extension cifar_jax._onednn_conv does not load ({_load_error}); "
                   "reinstall with `pip install -e .` on Linux x86-64 with a C++ compiler")
  if backend == "onednn" and reasons:
    raise ValueError("conv_backend=onednn is not possible: " + "; ".join(reasons)
                     + ". Set --config.conv_backend=auto or xla.")
  return not reasons


def configure(backend: str, *, num_devices: int, parallel: str) -> bool:
  """Sets the implementation for steps traced from now on; returns whether
  it is oneDNN."""
  global _enabled
  _enabled = resolve(backend, platform=jax.default_backend(), num_devices=num_devices,
                     parallel=parallel)
  return _enabled


def enabled() -> bool:
  return _enabled


@contextlib.contextmanager
def use_onednn(flag: bool) -> Iterator[None]:
  """Temporarily forces the choice (for tests and benchmarks)."""
  global _enabled
  if flag and not available():
    raise RuntimeError(f"oneDNN convolutions are unavailable: {_load_error}")
  previous, _enabled = _enabled, flag
  try:
    yield
  finally:
    _enabled = previous


# ---- the differentiable oneDNN convolution -----------------------------------
def _attributes(strides, padding) -> dict[str, np.int64]:
  (top, bottom), (left, right) = padding
  return {"stride_h": np.int64(strides[0]), "stride_w": np.int64(strides[1]),
          "pad_top": np.int64(top), "pad_left": np.int64(left),
          "pad_bottom": np.int64(bottom), "pad_right": np.int64(right)}


def _call(name: str, shape, *operands, strides, padding):
  result = jax.ShapeDtypeStruct(shape, operands[0].dtype)
  return jax.ffi.ffi_call(name, result, vmap_method="sequential")(
      *operands, **_attributes(strides, padding))


def _output_shape(x_shape, w_shape, strides, padding):
  spatial = [(x_shape[1 + i] + sum(padding[i]) - w_shape[i]) // strides[i] + 1
             for i in range(2)]
  return (x_shape[0], *spatial, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x: jax.Array, w: jax.Array, strides: tuple[int, int],
              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution by oneDNN with explicit padding; float32
  or bfloat16 (accumulated in float32) operands."""
  return _call("OnednnConvForward", _output_shape(x.shape, w.shape, strides, padding),
               x, w, strides=strides, padding=padding)


def _conv_forward(x, w, strides, padding):
  return conv_nhwc(x, w, strides, padding), (x, w)


def _conv_backward(strides, padding, residuals, dy):
  x, w = residuals
  dx = _call("OnednnConvBackwardData", x.shape, dy, w, strides=strides, padding=padding)
  dw = _call("OnednnConvBackwardWeights", w.shape, x, dy, strides=strides, padding=padding)
  return dx, dw


conv_nhwc.defvjp(_conv_forward, _conv_backward)


def _covered(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
             feature_group_count, batch_group_count, preferred_element_type) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  if lhs.dtype != rhs.dtype or lhs.dtype not in (jnp.float32, jnp.bfloat16):
    return False
  if preferred_element_type is not None and preferred_element_type != lhs.dtype:
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == wanted and 0 not in lhs.shape


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, run by oneDNN when enabled and covered."""
  if _enabled and _covered(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                           feature_group_count, batch_group_count, preferred_element_type):
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if all(p >= 0 for pair in padding for p in pair):
      return conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides), padding)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
