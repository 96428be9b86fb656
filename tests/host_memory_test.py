"""host_memory: a program that calls `use_huge_pages()` re-executes itself
once with glibc's huge-page tunable, keeps its arguments, and stops
page-faulting every 4 KB of XLA's big buffers on every call. Measured in fresh
processes, because glibc reads the tunable only at start-up."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

from cifar_jax import host_memory

pytestmark = pytest.mark.skipif(
  not host_memory.supported(), reason="needs glibc >= 2.35 and transparent huge pages"
)

_PROGRAM = textwrap.dedent("""
    import os, resource, sys
    from cifar_jax import host_memory
    host_memory.use_huge_pages()
    print("active", host_memory.active(), "args", *sys.argv[1:], "pid", os.getpid())
    import jax, jax.numpy as jnp
    x = jnp.ones((64, 1024, 1024), jnp.float32)  # 256 MB: over glibc's mmap threshold
    f = jax.jit(lambda x: x * 2 + 1)
    for _ in range(2):
      f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
      f(x).block_until_ready()
    print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _run(tmp_path, **env_overrides):
  script = tmp_path / "program.py"
  script.write_text(_PROGRAM)
  env = {
    k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT_ENV)
  }
  env.update(XLA_FLAGS="", PYTHONPATH=REPO_ROOT, **env_overrides)
  process = subprocess.Popen(
    [sys.executable, str(script), "--flag=1", "two words"],
    env=env,
    stdout=subprocess.PIPE,
    text=True,
  )
  out, _ = process.communicate()
  assert process.returncode == 0
  lines = out.splitlines()
  return lines, int(lines[-1].split()[1]), process.pid


def test_huge_pages_stop_the_page_faults_of_big_buffers(tmp_path):
  lines, faults_huge, pid = _run(tmp_path)
  assert len(lines) == 2  # re-executed once: the first start printed nothing
  assert lines[0] == f"active True args --flag=1 two words pid {pid}"  # same process
  opted_out, faults_system, _ = _run(tmp_path, CIFAR_JAX_MALLOC="system")
  assert opted_out[0].startswith("active False")
  pages_per_call = 256 * 2**20 // 4096
  # Without it every call faults in every 4 KB page of its output again;
  # with 2 MB pages, at most 1/512 of that.
  assert faults_system > 7 * pages_per_call, faults_system
  assert faults_huge < faults_system / 50, (faults_huge, faults_system)


def test_environment_extends_existing_tunables(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  assert host_memory.environment() == {
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + host_memory.TUNABLE
  }
  # A process that already has it (re-executed) passes it on once.
  monkeypatch.setenv("GLIBC_TUNABLES", host_memory.TUNABLE + ":glibc.malloc.arena_max=2")
  assert host_memory.environment() == {
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + host_memory.TUNABLE
  }
  monkeypatch.setenv(host_memory.OPT_OUT_ENV, "system")
  assert host_memory.environment() == {}
