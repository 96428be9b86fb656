"""The compute precision and the convolution implementation of a run, settled
from the config and from what this machine can do, before anything compiles.

`choose(config, num_devices=..., parallel=...)` returns a `Compute`: the dtype
the model computes in and the name of its convolution implementation (a key
of `cpu_conv.IMPLEMENTATIONS`), with one line, `Compute.notice`, that says
what was chosen and why. The model gets both as constructor arguments
(`run.create_model`), so a compiled program depends only on its inputs.

`config.half_precision`:
- ``"auto"``: bfloat16 where the device computes it natively (a GPU or TPU; a
  CPU whose oneDNN dispatches to AVX-512-BF16, AVX-NE-CONVERT or AMX), float32
  elsewhere;
- ``True``: bfloat16 everywhere. On a CPU whose oneDNN cannot create bf16
  convolutions (AVX2 only), oneDNN computes them in float32 with bf16 in and
  out, which is what a bf16 convolution with float32 accumulation computes;
- ``False``: float32.

`config.conv_backend`: ``"auto"`` uses oneDNN where it can serve the run (a
CPU, the extension loaded, one program per device: one device, or pmap),
``"xla"`` never, ``"onednn"`` insists and fails here, before compiling, with
the reason and the setting to change. The transformers' attention and dense
layers follow it (`Compute.attention`, `Compute.dot_general`, from
`cpu_attention` and `cpu_matmul`): custom calls of the same extension under
the same constraints.

FLOPs are counted on `XLA_FORM` (XLA's cost analysis cannot see into the
oneDNN custom calls), whatever a run uses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax import cpu_attention
from cifar_jax import cpu_conv
from cifar_jax import cpu_matmul

CONV_BACKENDS = ("auto", "onednn", "xla")
# oneDNN instruction sets with bf16 arithmetic (dot products), not emulation.
NATIVE_BF16_ISAS = (
  "avx2_vnni_2",
  "avx512_core_bf16",
  "avx512_core_fp16",
  "avx512_core_amx",
  "avx512_core_amx_fp16",
)
# /proc/cpuinfo flags of the same, for machines without the extension.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


@dataclasses.dataclass(frozen=True)
class Machine:
  """What `choose` needs to know of the machine; `Machine.detect()` asks."""

  platform: str  # jax.default_backend(): cpu, gpu, tpu
  cpu_isa: str  # oneDNN's instruction set, else what /proc/cpuinfo says
  native_bf16: bool
  onednn_error: str | None  # why the extension does not load; None if it does
  onednn_f32: bool = False  # oneDNN can create fp32 convolution primitives
  onednn_bf16: bool = False  # ... and bf16 ones

  @classmethod
  def detect(cls) -> "Machine":
    platform = jax.default_backend()
    if platform != "cpu":
      return cls(platform, "", True, None)
    if cpu_conv.available():
      isa = cpu_conv.cpu_isa()
      return cls(
        platform,
        isa,
        isa in NATIVE_BF16_ISAS,
        None,
        cpu_conv.supports("f32"),
        cpu_conv.supports("bf16"),
      )
    flags = _cpu_flags()
    native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    isa = (
      native[0]
      if native
      else ("avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no AVX2")
    )
    return cls(platform, isa, bool(native), cpu_conv.unavailable_reason())


def _cpu_flags() -> set[str]:
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return set()
  for line in text.splitlines():
    if line.startswith("flags"):
      return set(line.split(":", 1)[1].split())
  return set()


@dataclasses.dataclass(frozen=True)
class Compute:
  """How a run computes: `dtype` and the convolution implementation `conv`."""

  dtype: Any
  conv: str  # a key of cpu_conv.IMPLEMENTATIONS
  notice: str = ""

  @property
  def conv_general_dilated(self) -> Callable[..., jax.Array]:
    return cpu_conv.IMPLEMENTATIONS[self.conv]

  @property
  def attention(self) -> Callable[..., jax.Array]:
    """The transformers' attention: oneDNN's wherever the convolutions are
    (the same custom-call constraints; it takes bf16 on every CPU)."""
    return cpu_attention.IMPLEMENTATIONS[self.conv_backend]

  @property
  def dot_general(self) -> Callable[..., jax.Array]:
    """The transformers' dense-layer products: oneDNN's (float32 ones)
    wherever the convolutions are."""
    return cpu_matmul.IMPLEMENTATIONS[self.conv_backend]

  @property
  def dtype_name(self) -> str:
    return jnp.dtype(self.dtype).name

  @property
  def conv_backend(self) -> str:
    """ "onednn" or "xla": the family of `conv`."""
    return "xla" if self.conv == "xla" else "onednn"


XLA_FORM = Compute(jnp.float32, "xla", "float32, XLA convolutions (the form FLOPs are counted on)")


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """The problems of the precision and convolution keys, as messages."""
  errors = []
  half = config.half_precision
  if not (isinstance(half, bool) or half == "auto"):
    errors.append(
      f"config.half_precision must be True, False or 'auto', not {config.half_precision!r}."
    )
  if config.conv_backend not in CONV_BACKENDS:
    errors.append(
      f"config.conv_backend must be one of {', '.join(CONV_BACKENDS)}, not {config.conv_backend!r}."
    )
  return errors


def choose(
  config: ml_collections.ConfigDict,
  *,
  num_devices: int,
  parallel: str,
  machine: Machine | None = None,
) -> Compute:
  """Settles `config.half_precision` and `config.conv_backend` for a run on
  `num_devices` devices in `parallel` mode on `machine` (default: this one)."""
  errors = validate(config)
  if errors:
    raise ValueError(" ".join(errors))
  machine = machine or Machine.detect()
  where = (
    f"this CPU ({machine.cpu_isa})"
    if machine.platform == "cpu"
    else f"this {machine.platform.upper()}"
  )
  requested = config.half_precision
  if requested == "auto":
    bf16 = machine.native_bf16
    why = [f"half_precision=auto: {where} {'has' if bf16 else 'has no'} native bf16"]
  else:
    bf16 = requested
    why = [f"half_precision={requested}"]
    if bf16 and not machine.native_bf16:
      why.append(
        f"{where} has no native bf16, so bf16 runs slower than float32 here "
        "(half_precision=auto picks float32)"
      )

  obstacles = _onednn_obstacles(machine, num_devices, parallel, bf16)
  if config.conv_backend == "onednn" and obstacles:
    raise ValueError(
      "conv_backend=onednn is not possible: "
      + "; ".join(obstacles)
      + ". Set --config.conv_backend=auto (oneDNN where possible) or xla."
    )
  if config.conv_backend == "xla":
    conv, what = "xla", "XLA convolutions (conv_backend=xla)"
  elif obstacles:
    conv, what = "xla", "XLA convolutions (" + "; ".join(obstacles) + ")"
  elif bf16 and not machine.onednn_bf16:
    conv = "onednn_fp32"
    what = (
      f"oneDNN convolutions in float32 with bf16 in and out (oneDNN has no bf16 "
      f"convolutions for {machine.cpu_isa})"
    )
  else:
    conv, what = "onednn", "oneDNN convolutions"
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  notice = f"Compute: {jnp.dtype(dtype).name}, {what}; {'; '.join(why)}."
  return Compute(dtype, conv, notice)


def _onednn_obstacles(machine: Machine, num_devices: int, parallel: str, bf16: bool) -> list[str]:
  """Why oneDNN convolutions cannot serve this run (empty: they can)."""
  obstacles = []
  if machine.platform != "cpu":
    obstacles.append(f"the backend is {machine.platform}, and oneDNN here runs on CPUs only")
  if parallel == "jit" and num_devices > 1:
    obstacles.append(
      f"parallel=jit over {num_devices} devices needs a sharding rule a "
      "custom call does not have (use parallel=pmap or one device)"
    )
  if machine.platform == "cpu":
    if machine.onednn_error is not None:
      obstacles.append(
        f"the extension cifar_jax._onednn_conv does not load ({machine.onednn_error})"
      )
    elif not machine.onednn_f32:
      obstacles.append(
        f"oneDNN cannot create {'bf16 or ' if bf16 else ''}float32 "
        f"convolutions for this CPU's instruction set ({machine.cpu_isa}; "
        "is ONEDNN_MAX_CPU_ISA set too low?)"
      )
  return obstacles
