"""Fake in-memory CIFAR splits and the tiny test config, for tests and for the
processes they start (which must not import conftest: it fixes the device
count)."""

import numpy as np


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
      images[i, 4 + 12 * row : 12 + 12 * row, 2 + 6 * col : 6 + 6 * col] = 255
  return input_pipeline.ArraySplit("fake", images, labels, input_pipeline.CIFAR10_CLASSES)


def make_tiny_config(compile_cache: str):
  """lenet5's config shrunk for tests: small batches, a shared compile cache."""
  from cifar_jax.configs import lenet5

  config = lenet5.get_config()
  config.num_epochs = 2
  config.batch_size = 32
  config.eval_batch_size = 32
  config.log_every_steps = 4
  config.compilation_cache_dir = compile_cache
  return config
