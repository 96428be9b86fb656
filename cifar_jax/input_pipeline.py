"""CIFAR-10 from tensorflow-datasets into memory, and the index plans that batch it.

CIFAR fits in memory, so a split is read once into uint8 arrays and every
later step works on indices: a seeded permutation per epoch for training, and
for evaluation consecutive batches whose last one is padded and masked so that
every example counts exactly once. Pixels stay uint8 until the train step,
where augmentation and normalisation run on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import sys
import urllib.parse

import numpy as np

# Per-channel statistics of the CIFAR-10 training set (pixel values / 255).
IMAGE_SHAPE = (32, 32, 3)  # height, width, channels of every CIFAR image
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR10_CLASSES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)


class DatasetNotFoundError(RuntimeError):
  """The dataset or split is not available locally and cannot be downloaded."""


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split held in memory: images (N, H, W, C) uint8, labels (N,) int32."""

  name: str
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)


def resolve_data_dir(data_dir: str | None) -> str | None:
  """`dataset.data_dir`, else $TFDS_DATA_DIR, else None (tfds' own default)."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or None


class EmptySplitError(ValueError):
  """A split string selects no examples."""


def load_split(
  dataset_name: str,
  split: str,
  data_dir: str | None = None,
  download: bool = True,
  key: str = "dataset split",
) -> ArraySplit:
  """Reads a whole tfds split (slices like 'train[45000:]' allowed) into memory.

  `key` names the config key the split came from, for the error when it
  selects no examples."""
  import tensorflow as tf  # Imported late: TensorFlow is slow to start.
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not grab GPU memory.
  data_dir = resolve_data_dir(data_dir)
  where = data_dir or "the tfds default directory (~/tensorflow_datasets)"
  load = functools.partial(
    tfds.load, dataset_name, split=split, data_dir=data_dir, as_supervised=True
  )
  try:
    builder = tfds.builder(dataset_name, data_dir=data_dir)
    _check_not_empty(builder, split, key)
    try:
      ds = load(download=False)
    except AssertionError:  # tfds' way of saying the data is not prepared there
      _check_download_possible(builder, download)
      print(
        f"{dataset_name} is not in {where}: downloading and preparing it there.", file=sys.stderr
      )
      ds = load(download=True)
  except EmptySplitError:
    raise
  except ValueError as e:
    if "split" not in str(e).lower():
      raise
    raise DatasetNotFoundError(
      f"Split {split!r} is not available for {dataset_name!r} in {where}: {e} "
      f"Set --config.dataset.train_split / --config.dataset.eval_split to an "
      f"available split, e.g. 'train[:45000]' and 'train[45000:]'."
    ) from None
  except Exception as e:  # noqa: BLE001 - any failure to obtain data means one fix.
    raise DatasetNotFoundError(
      f"Cannot load dataset {dataset_name!r} from {where} and cannot download it "
      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Point "
      f"--config.dataset.data_dir (or the TFDS_DATA_DIR environment variable) at a "
      f"folder holding a prepared '{dataset_name}', or prepare one with "
      f"`tfds build {dataset_name} --data_dir=DIR` on a machine with internet."
    ) from None
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(10_000)):
    images.append(x)
    labels.append(y)
  label_feature = builder.info.features["label"]
  class_names = tuple(label_feature.names)
  if dataset_name == "cifar10" and class_names == tuple(map(str, range(10))):
    class_names = CIFAR10_CLASSES  # builder info read without its label file (mock data)
  return ArraySplit(
    split,
    np.concatenate(images).astype(np.uint8),
    np.concatenate(labels).astype(np.int32),
    class_names,
  )


def _check_not_empty(builder, split: str, key: str) -> None:
  """Fails, naming `key`, when the prepared data has no example in `split`
  (e.g. 'train[:0]'); says nothing when the data is not prepared yet."""
  try:
    size = builder.info.splits[split].num_examples
  except Exception:  # noqa: BLE001 - not prepared, or a split tfds rejects later
    return
  if size == 0:
    sizes = ", ".join(f"{name}: {info.num_examples}" for name, info in builder.info.splits.items())
    raise EmptySplitError(
      f"config.{key}={split!r} selects no examples of {builder.name} ({sizes}). "
      "Choose a non-empty slice, e.g. 'train[:45000]'."
    )


def _check_download_possible(builder, download: bool) -> None:
  """Fails at once rather than after minutes of tfds download retries."""
  if not download:
    raise FileNotFoundError("the dataset is not prepared there and downloading is off")
  for url in builder.url_infos or {}:
    host = urllib.parse.urlparse(url).hostname
    try:
      socket.getaddrinfo(host, 443)
    except OSError as e:
      raise ConnectionError(f"no network: cannot resolve {host} ({e})") from None


def train_index_plan(
  num_examples: int, batch_size: int, seed: int, epoch: int, weights: np.ndarray | None = None
) -> np.ndarray:
  """Indices (steps_per_epoch, batch_size) of one epoch: a fresh permutation
  seeded by (seed, epoch), last partial batch dropped. Being a pure function of
  its arguments is what makes resumed training reproduce an uninterrupted run.

  With `weights` (hard-example mining), the epoch's examples are instead drawn
  with replacement with those probabilities.
  """
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(
      f"batch_size {batch_size} is larger than the training split "
      f"({num_examples} examples); lower --config.batch_size."
    )
  rng = np.random.default_rng([seed, epoch])
  if weights is None:
    order = rng.permutation(num_examples)
  else:
    order = rng.choice(num_examples, size=steps * batch_size, replace=True, p=weights)
  return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


# Seeds the random first side of every image for alternating flips, apart
# from the stream of the epoch permutations.
_FLIP_STREAM = 7919


def alternating_flips(indices: np.ndarray, num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """Which of `indices` to mirror in `epoch` under airbench's alternating flip.

  Every training image gets a random side once (from `seed`); even epochs show
  it that way and odd epochs mirrored, so each pair of epochs sees both
  sides of every image, where independent coin flips would leave a quarter of
  them seen one way only. Bool array shaped like `indices`.
  """
  first_side = np.random.default_rng([seed, _FLIP_STREAM]).random(num_examples) < 0.5
  return first_side[indices] ^ bool(epoch % 2)


def epoch_batches(
  num_examples: int,
  batch_size: int,
  seed: int,
  epoch: int,
  alternating_flip: bool,
  weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """The `train_index_plan` of `epoch` and, with `alternating_flip`, its
  flips (else None): what the train loop, and the data filter's proxy ahead
  of it, gather each step's batch by."""
  plan = train_index_plan(num_examples, batch_size, seed, epoch, weights)
  flips = alternating_flips(plan, num_examples, seed, epoch) if alternating_flip else None
  return plan, flips


def mining_weights(
  losses: np.ndarray, power: float = 1.0, uniform_fraction: float = 0.5
) -> np.ndarray:
  """Sampling probabilities for loss-based hard-example mining: proportional
  to loss**power, mixed with the uniform distribution so that every example
  keeps being seen (and its loss re-measured)."""
  losses = np.nan_to_num(np.asarray(losses, np.float64), nan=0.0, posinf=0.0)
  hard = np.maximum(losses, 1e-8) ** power
  hard /= hard.sum()
  return (1.0 - uniform_fraction) * hard + uniform_fraction / len(losses)


def eval_index_plan(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Consecutive indices (num_batches, batch_size) and a 0/1 mask of the same
  shape: the last batch is padded with index 0 and mask 0, never dropped."""
  num_batches = -(-num_examples // batch_size)
  flat = np.arange(num_batches * batch_size)
  mask = (flat < num_examples).astype(np.float32)
  indices = np.where(flat < num_examples, flat, 0).astype(np.int32)
  return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)
