"""Convolutions on CPU through oneDNN, the library PyTorch uses there.

XLA:CPU computes convolutions, and above all their weight gradients, several
times slower than oneDNN: at batch 128, a 3x3 64->64 conv on 32x32 maps
takes ~95 ms forward and ~280 ms for the kernel gradient on XLA against ~38
and ~31 ms in PyTorch on the same two cores. The C++ extension
`cifar_jax._onednn_conv` (source in cifar_jax/csrc) exposes oneDNN's forward,
backward-data and backward-weights primitives as XLA FFI handlers; this module
registers them and wraps them in a custom VJP behind functions with the exact
signature of `lax.conv_general_dilated`:

- `onednn_conv_general_dilated` runs covered convolutions in their own dtype
  (float32, or bfloat16 accumulated in float32);
- `onednn_fp32_conv_general_dilated` runs bfloat16 ones in float32 (bf16 in
  and out), for CPUs on which oneDNN has no bf16 convolutions (no AVX-512).

A model is given one of them (`IMPLEMENTATIONS`) as its `conv_general_dilated`
field; nothing here is switched on or off process-wide. Which one a run uses
is settled before compiling by `cifar_jax.precision`, from what this module
reports of the machine: whether the extension loads (`available`), the
instruction set oneDNN dispatches to (`cpu_isa`, which honours
ONEDNN_MAX_CPU_ISA) and whether it can create the primitives of a dtype
(`supports`). Convolutions oneDNN does not cover here (dilated or batch-grouped
ones, mixed dtypes, other layouts) always go to `lax.conv_general_dilated`.

The extension is used only under the jaxlib it was compiled against (its FFI
headers); under another, or if it does not load, `available()` is False and
`unavailable_reason()` says how to rebuild it.

Set the environment variable CIFAR_JAX_ONEDNN_VERBOSE=1 to print, for each
new convolution geometry, the oneDNN kernel chosen for it (e.g.
``brgconv:avx512_core_bf16``).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

_HANDLERS = (
  "OnednnConvForward",
  "OnednnConvBackwardData",
  "OnednnConvBackwardWeights",
  "OnednnAttentionForward",  # for cifar_jax.cpu_attention
  "OnednnAttentionBackward",
  "OnednnMatmul",  # for cifar_jax.cpu_matmul
)
_NHWC = ("NHWC", "HWIO", "NHWC")
REBUILD = (
  "pip install setuptools onednn-devel-cpu-gomp==2023.2.0 && "
  "pip install --no-build-isolation --no-deps --force-reinstall -e ."
)

_extension = None
_load_error: str | None = None


def _preload_onednn() -> None:
  """Loads libdnnl.so.3 from the `onednn-cpu-gomp` wheel (it installs into
  <prefix>/lib, not on the loader path) so the extension's link resolves."""
  dist = importlib.metadata.distribution("onednn-cpu-gomp")
  for f in dist.files or ():
    if str(f).endswith("libdnnl.so.3"):
      ctypes.CDLL(str(dist.locate_file(f)), mode=ctypes.RTLD_GLOBAL)
      return
  raise OSError("onednn-cpu-gomp does not contain libdnnl.so.3")


def _load():
  from cifar_jax import _onednn_conv  # pylint: disable=import-outside-toplevel

  return _onednn_conv


def available() -> bool:
  """Whether the oneDNN extension is built for this jaxlib and loads;
  registers its handlers once."""
  global _extension, _load_error
  if _extension is not None or _load_error is not None:
    return _extension is not None
  try:
    _preload_onednn()
    extension = _load()
    built_for = getattr(extension, "JAXLIB_VERSION", "an unknown version")
    if built_for != jaxlib.__version__:
      raise ImportError(
        f"it was built against jaxlib {built_for}, but jaxlib {jaxlib.__version__} is running"
      )
    for name in _HANDLERS:
      jax.ffi.register_ffi_target(name, getattr(extension, name), platform="cpu")
    _extension = extension
  except (ImportError, OSError, importlib.metadata.PackageNotFoundError) as e:
    _load_error = f"{type(e).__name__}: {e}; rebuild it with `{REBUILD}`"
  return _extension is not None


def unavailable_reason() -> str | None:
  return None if available() else _load_error


def cpu_isa() -> str | None:
  """The instruction set oneDNN dispatches to (e.g. "avx2",
  "avx512_core_bf16", "avx512_core_amx"), after ONEDNN_MAX_CPU_ISA; None
  without the extension."""
  return _extension.cpu_isa() if available() else None


@functools.cache
def supports(dtype: str) -> bool:
  """Whether oneDNN can create the forward and both backward convolution
  primitives, dense and depthwise, for `dtype` ("f32" or "bf16") on this CPU."""
  return available() and bool(_extension.supports(dtype))


# ---- the differentiable oneDNN convolution -----------------------------------
def _attributes(strides, padding) -> dict[str, np.int64]:
  (top, bottom), (left, right) = padding
  return {
    "stride_h": np.int64(strides[0]),
    "stride_w": np.int64(strides[1]),
    "pad_top": np.int64(top),
    "pad_left": np.int64(left),
    "pad_bottom": np.int64(bottom),
    "pad_right": np.int64(right),
  }


def _call(name: str, shape, *operands, strides, padding):
  result = jax.ShapeDtypeStruct(shape, operands[0].dtype)
  return jax.ffi.ffi_call(name, result, vmap_method="sequential")(
    *operands, **_attributes(strides, padding)
  )


def _output_shape(x_shape, w_shape, strides, padding):
  spatial = [(x_shape[1 + i] + sum(padding[i]) - w_shape[i]) // strides[i] + 1 for i in range(2)]
  return (x_shape[0], *spatial, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(
  x: jax.Array,
  w: jax.Array,
  strides: tuple[int, int],
  padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution by oneDNN with explicit padding; float32
  or bfloat16 (accumulated in float32) operands."""
  return _call(
    "OnednnConvForward",
    _output_shape(x.shape, w.shape, strides, padding),
    x,
    w,
    strides=strides,
    padding=padding,
  )


def _conv_forward(x, w, strides, padding):
  return conv_nhwc(x, w, strides, padding), (x, w)


def _conv_backward(strides, padding, residuals, dy):
  x, w = residuals
  dx = _call("OnednnConvBackwardData", x.shape, dy, w, strides=strides, padding=padding)
  dw = _call("OnednnConvBackwardWeights", w.shape, x, dy, strides=strides, padding=padding)
  return dx, dw


conv_nhwc.defvjp(_conv_forward, _conv_backward)


def _covered(
  lhs,
  rhs,
  lhs_dilation,
  rhs_dilation,
  dimension_numbers,
  feature_group_count,
  batch_group_count,
  preferred_element_type,
) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  if lhs.dtype != rhs.dtype or lhs.dtype not in (jnp.float32, jnp.bfloat16):
    return False
  if preferred_element_type is not None and preferred_element_type != lhs.dtype:
    return False
  if batch_group_count != 1 or feature_group_count < 1:
    return False
  # Grouped (depthwise at one input channel per group): oneDNN's 5-D weights.
  if lhs.shape[3] != rhs.shape[2] * feature_group_count or rhs.shape[3] % feature_group_count:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == wanted and 0 not in lhs.shape


def _dispatch(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
  *,
  bf16_in_fp32: bool,
):
  """`lax.conv_general_dilated`, run by oneDNN where covered. With
  `bf16_in_fp32`, bfloat16 convolutions are computed in float32 and rounded
  back to bfloat16: what a bf16 convolution with float32 accumulation
  computes, on CPUs where oneDNN cannot create bf16 primitives."""
  if not available():  # registers the handlers, once
    raise RuntimeError(f"oneDNN convolutions are unavailable: {_load_error}")
  if _covered(
    lhs,
    rhs,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    preferred_element_type,
  ):
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if all(p >= 0 for pair in padding for p in pair):
      strides = tuple(int(s) for s in window_strides)
      if rhs.shape[:2] == (1, 1) and strides != (1, 1) and not any(sum(padding, ())):
        # A strided 1x1 convolution is a unit-stride one on every s-th pixel.
        # Computing it so keeps oneDNN off its strided 1x1 kernels: on AVX2,
        # oneDNN 3.2's backward-weights one (jit_1x1 with its strided-input
        # copy) returns wrong kernel gradients in about 1 call in 4 when it
        # runs on several threads (tests/cpu_conv_test.py has the geometry).
        lhs, strides = lhs[:, :: strides[0], :: strides[1]], (1, 1)
      if bf16_in_fp32 and lhs.dtype == jnp.bfloat16:
        y = conv_nhwc(lhs.astype(jnp.float32), rhs.astype(jnp.float32), strides, padding)
        return y.astype(jnp.bfloat16)
      return conv_nhwc(lhs, rhs, strides, padding)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


# Drop-in replacements for `lax.conv_general_dilated` (same arguments): in the
# operands' dtype, and with bf16 computed in float32 (see `_dispatch`).
onednn_conv_general_dilated = functools.partial(_dispatch, bf16_in_fp32=False)
onednn_fp32_conv_general_dilated = functools.partial(_dispatch, bf16_in_fp32=True)


# The convolution implementations a model can be given, by the name
# `cifar_jax.precision` settles on.
IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
  "xla": lax.conv_general_dilated,
  "onednn": onednn_conv_general_dilated,
  "onednn_fp32": onednn_fp32_conv_general_dilated,
}
