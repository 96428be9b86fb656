"""Host memory reuse for XLA:CPU: glibc malloc settings that keep freed buffers.

XLA:CPU mallocs the large buffers of every step (activations, gradients) and
frees them when the step ends. glibc hands out blocks over 32 MB, and in the
per-thread arenas of XLA's worker threads anything too big for their 64 MB
heaps, as fresh `mmap`s and `munmap`s them on free. So every step faults
in, and the kernel zero-fills, every page of every big buffer again. On the
2-core development CPU that kernel work outweighed the arithmetic: 40 calls
of `x * 2 + 1` on a 236 MB array took 0.65 s of user time and 4.2 s of
system time (2.3 million page faults).

`keep_freed_memory()` puts every thread on glibc's main arena, serves big
blocks from its heap instead of `mmap`, and never returns freed heap memory
to the system (a step of `speedrun` at batch 2000 frees more than 2 GB at
once, so any finite trim threshold brings the faults back). The same loop
then takes 0.17 s of system time, and a training step of `speedrun` (bf16,
batch 1024 or 2000) runs 1.5-1.7x faster, `my_cnn`'s ~1.2x. The cost is
that the process keeps its peak heap.

It must run before any other thread allocates: a thread that has its own
arena keeps it, and later threads may be handed that arena. numpy's BLAS
starts threads when it is imported, so the entry points call it before
importing anything else; `environment()` gives the same settings to child
processes (Ray workers). It changes nothing on platforms without glibc, and
`CIFAR_JAX_MALLOC=system` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "CIFAR_JAX_MALLOC"

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely."

_applied = False


def _opted_out() -> bool:
  return (os.environ.get(OPT_OUT_ENV, "").lower() == "system"
          or not sys.platform.startswith("linux"))


def environment() -> dict[str, str]:
  """glibc's environment variables for the same settings, for processes
  started from this one ({} when opted out)."""
  if _opted_out():
    return {}
  return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
          "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}  # SIZE_MAX: never trim


def keep_freed_memory() -> bool:
  """Applies the settings once; returns whether they are in effect (False on
  non-glibc platforms or with CIFAR_JAX_MALLOC=system)."""
  global _applied
  if _applied:
    return True
  if _opted_out():
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM)))
  return _applied
