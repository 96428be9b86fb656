"""host_memory: with its glibc settings, XLA:CPU stops page-faulting big
buffers anew on every call. Measured in fresh processes, because the settings
must be made before XLA starts its threads."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

_FAULTS_OF_REPEATED_CALLS = textwrap.dedent("""
    import resource, sys
    from cifar_jax import host_memory
    print("applied", host_memory.keep_freed_memory())
    import jax, jax.numpy as jnp
    x = jnp.ones((64, 1024, 1024), jnp.float32)  # 256 MB: over every mmap threshold
    f = jax.jit(lambda x: x * 2 + 1)
    for _ in range(4):  # the heap grows towards its working size
      f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(24):
      f(x).block_until_ready()
    print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _run(malloc_env: str, **extra_env: str) -> tuple[bool, int]:
  env = dict(os.environ, CIFAR_JAX_MALLOC=malloc_env, XLA_FLAGS="", PYTHONPATH=REPO_ROOT,
             **extra_env)
  out = subprocess.run([sys.executable, "-c", _FAULTS_OF_REPEATED_CALLS], env=env,
                       check=True, capture_output=True, text=True).stdout.split()
  return out[1] == "True", int(out[3])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("route", ["mallopt", "environment"])
def test_freed_buffers_are_reused_instead_of_faulted_in_again(route):
  """mallopt in this process, or glibc's environment variables for a child
  process (how Ray workers get the settings)."""
  if route == "mallopt":
    applied, faults_kept = _run("")
    assert applied
  else:
    from cifar_jax import host_memory
    variables = host_memory.environment()
    assert variables
    _, faults_kept = _run("system", **variables)  # the child's mallopt is off
  not_applied, faults_system = _run("system")
  assert not not_applied
  pages_per_call = 256 * 2**20 // 4096
  # The system allocator faults in every page of each call's output again.
  # Kept memory is reused: most calls fault nothing (glibc still grows the
  # heap now and then, a few buffers' worth in a row).
  assert faults_system > 22 * pages_per_call, faults_system
  assert faults_kept < faults_system / 2, (faults_kept, faults_system)


def test_opting_out_leaves_the_allocator_alone(monkeypatch):
  from cifar_jax import host_memory
  monkeypatch.setenv(host_memory.OPT_OUT_ENV, "system")
  assert host_memory.environment() == {}
