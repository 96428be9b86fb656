"""Test set-up: several fake CPU devices, quiet TensorFlow, repo root importable.

XLA reads XLA_FLAGS once, when the backend starts, so the device count is set
here before any test imports jax.
"""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)  # so that `configs` imports as in the README


import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tensorflow_datasets")


def make_split(num_examples: int, seed: int = 0, learnable: bool = False):
  """A fake in-memory CIFAR split; `learnable` makes the class visible in the
  pixels (a bright square whose position encodes the label) so that a few
  steps of training must raise accuracy."""
  from cifar_jax import input_pipeline
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)
  images = rng.integers(0, 128, (num_examples, 32, 32, 3)).astype(np.uint8)
  if learnable:
    for i, label in enumerate(labels):
      row, col = divmod(int(label), 5)
      images[i, 4 + 12 * row: 12 + 12 * row, 2 + 6 * col: 6 + 6 * col] = 255
  return input_pipeline.ArraySplit("fake", images, labels, input_pipeline.CIFAR10_CLASSES)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for the session: tests that build the
  same steps compile them once."""
  return str(tmp_path_factory.mktemp("xla_cache"))


def make_tiny_config(compile_cache: str):
  """lenet5's config shrunk for tests: small batches, a shared compile cache."""
  from configs import lenet5
  config = lenet5.get_config()
  config.num_epochs = 2
  config.batch_size = 32
  config.eval_batch_size = 32
  config.log_every_steps = 4
  config.compilation_cache_dir = compile_cache
  return config


@pytest.fixture
def tiny_config(compile_cache):
  return make_tiny_config(compile_cache)
