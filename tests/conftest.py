"""Test set-up: several fake CPU devices, quiet TensorFlow, fake splits.

XLA reads XLA_FLAGS once, when the backend starts, so the device count is set
here before any test imports jax. The tests run each program for a few steps
on tiny inputs, so they also skip LLVM's optimisations
(`--xla_backend_optimization_level=0`): compiling dominates, and the suite
takes ~15% less time; the processes tests start inherit both.
"""

import os

# XLA_FLAGS for the one-device processes tests start.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  _flags += " " + FAST_COMPILE_FLAGS
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


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for the session: tests that build the
  same steps compile them once."""
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture
def tiny_config(compile_cache):
  return make_tiny_config(compile_cache)
