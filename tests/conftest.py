"""Test set-up: several fake CPU devices, quiet TensorFlow, fake splits.

XLA reads XLA_FLAGS once, when the backend starts, so the device count is set
here before any test imports jax. The tests run each program for a few steps
on tiny inputs, so compiling dominates and they ask XLA:CPU for its cheapest
code generation: no LLVM optimisations (`--xla_backend_optimization_level=0`,
~15% off the suite) and its older elemental emitters instead of the fusion
emitters (`--xla_cpu_use_fusion_emitters=false`: every config of
configs_machines_test trained in 2:07 instead of 3:20 on a 2-core Zen 3).
Both compile the same program with other machine code (last-bit differences
at most, inside the tests' tolerances); the processes tests start get the
same flags.
"""

import os
import subprocess
import sys

# XLA_FLAGS for the one-device processes tests start.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in FAST_COMPILE_FLAGS.split():
  if _flag.split("=")[0] not in _flags:
    _flags += " " + _flag
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


import pytest  # noqa: E402
from fake_data import make_split  # noqa: E402,F401 - tests import it from here
from fake_data import make_tiny_config  # noqa: E402
from search_fixtures import count_training  # noqa: E402,F401 - fixtures for tests/search_*
from search_fixtures import search_config  # noqa: E402,F401
from search_fixtures import splits  # noqa: E402,F401

SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tensorflow_datasets")

# Set in the processes `run_tests_under_avx2` starts: their tests must not start it again.
UNDER_ISA_LIMIT = os.environ.get("ONEDNN_MAX_CPU_ISA") is not None


@pytest.fixture(autouse=True)
def _instruction_set_limit_unchanged():
  """No test may leave ONEDNN_MAX_CPU_ISA changed: the processes later tests
  start inherit os.environ, and on an AVX-512 CPU they would then run as on
  an AVX2 one while the test expects its own machine (invisible on an
  AVX2-only CPU, where both are the same)."""
  before = os.environ.get("ONEDNN_MAX_CPU_ISA")
  yield
  after = os.environ.get("ONEDNN_MAX_CPU_ISA")
  assert after == before, f"the test left ONEDNN_MAX_CPU_ISA={after!r} (was {before!r})"


def run_tests_under_avx2(test_file: str, keyword: str) -> str:
  """Runs the tests of `test_file` selected by `keyword` (pytest -k) in a
  process whose oneDNN is limited to AVX2 (ONEDNN_MAX_CPU_ISA), as on a CPU
  without AVX-512 or bf16; asserts they passed and returns pytest's output.
  Skips on a CPU whose own oneDNN level is already AVX2 (a Zen 3, say): there
  the limit changes nothing, and the same tests have just run natively."""
  from cifar_jax import cpu_conv

  if cpu_conv.available() and cpu_conv.cpu_isa() == "avx2":
    pytest.skip("this CPU's oneDNN level is AVX2: the native run of these tests is the AVX2 run")
  env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": FAST_COMPILE_FLAGS}
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
  result = subprocess.run(
    command + [test_file, "-k", keyword],
    env=env,
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-3000:]
  return result.stdout


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for the session: tests that build the
  same steps compile them once."""
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture
def tiny_config(compile_cache):
  return make_tiny_config(compile_cache)
