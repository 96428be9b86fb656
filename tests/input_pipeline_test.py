"""Loading splits through tfds (mock and real) and the batching index plans."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import SHARED_DATA

from cifar_jax import input_pipeline


def test_load_split_from_tfds_mock():
  with tfds.testing.mock_data(num_examples=37):
    split = input_pipeline.load_split("cifar10", "train", data_dir="/nonexistent")
  assert split.images.shape == (37, 32, 32, 3) and split.images.dtype == np.uint8
  assert split.labels.shape == (37,) and split.labels.dtype == np.int32
  assert 0 <= split.labels.min() and split.labels.max() < 10
  assert split.class_names == input_pipeline.CIFAR10_CLASSES


def test_missing_dataset_names_the_fix(tmp_path):
  with pytest.raises(input_pipeline.DatasetNotFoundError) as e:
    input_pipeline.load_split("cifar10", "train", data_dir=str(tmp_path), download=False)
  message = str(e.value)
  assert "dataset.data_dir" in message and "TFDS_DATA_DIR" in message
  assert "tfds build cifar10" in message


def test_data_dir_falls_back_to_environment(monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")
  assert input_pipeline.resolve_data_dir(None) == "/from/env"
  assert input_pipeline.resolve_data_dir("/explicit") == "/explicit"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert input_pipeline.resolve_data_dir(None) is None


def test_train_plan_is_a_seeded_permutation_per_epoch():
  plan = input_pipeline.train_index_plan(100, 32, seed=0, epoch=0)
  assert plan.shape == (3, 32)  # the last partial batch is dropped
  assert len(np.unique(plan)) == 96
  np.testing.assert_array_equal(plan, input_pipeline.train_index_plan(100, 32, 0, 0))
  assert not np.array_equal(plan, input_pipeline.train_index_plan(100, 32, 0, 1))
  assert not np.array_equal(plan, input_pipeline.train_index_plan(100, 32, 1, 0))
  with pytest.raises(ValueError, match="batch_size"):
    input_pipeline.train_index_plan(10, 32, 0, 0)


@pytest.mark.parametrize("num_examples,batch_size", [(70, 32), (64, 32), (5, 32), (1, 1)])
def test_eval_plan_counts_every_example_once(num_examples, batch_size):
  indices, mask = input_pipeline.eval_index_plan(num_examples, batch_size)
  assert indices.shape == mask.shape and indices.shape[1] == batch_size
  assert mask.sum() == num_examples
  np.testing.assert_array_equal(np.sort(indices[mask > 0]), np.arange(num_examples))
  assert indices.shape[0] == -(-num_examples // batch_size)


@pytest.mark.real_data
@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/tensorflow_datasets absent")
def test_real_cifar10_slice_and_missing_test_split():
  split = input_pipeline.load_split("cifar10", "train[49000:]", data_dir=SHARED_DATA)
  assert split.images.shape == (1000, 32, 32, 3)
  assert 80 <= np.bincount(split.labels, minlength=10).min()
  # Real photos: the per-channel means are near the published CIFAR-10 ones.
  np.testing.assert_allclose(
    split.images.reshape(-1, 3).mean(0) / 255, input_pipeline.CIFAR10_MEAN, atol=0.03
  )
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="eval_split"):
    input_pipeline.load_split("cifar10", "test", data_dir=SHARED_DATA)


def test_hard_example_mining_samples_follow_the_losses():
  losses = np.full(100, 0.1)
  losses[:10] = 10.0  # ten hard examples
  weights = input_pipeline.mining_weights(losses, power=1.0, uniform_fraction=0.0)
  assert weights.sum() == pytest.approx(1.0)
  assert weights[0] / weights[50] == pytest.approx(100.0)
  plan = input_pipeline.train_index_plan(100, 50, seed=0, epoch=0, weights=weights)
  counts = np.bincount(
    np.concatenate(
      [input_pipeline.train_index_plan(100, 50, 0, e, weights).ravel() for e in range(50)]
    ),
    minlength=100,
  )
  hard_share = counts[:10].sum() / counts.sum()
  assert hard_share == pytest.approx(100 / (100 + 9), abs=0.02)  # 10*10 / (10*10 + 90*0.1)
  assert plan.shape == (2, 50)
  # Mixing with uniform keeps every example reachable.
  mixed = input_pipeline.mining_weights(losses, uniform_fraction=0.5)
  assert mixed.min() >= 0.5 / 100
  assert mixed[0] > mixed[50]


def test_alternating_flips_show_each_side_every_two_epochs():
  plan0 = input_pipeline.train_index_plan(1000, 100, seed=3, epoch=0)
  plan1 = input_pipeline.train_index_plan(1000, 100, seed=3, epoch=1)
  flips = [
    input_pipeline.alternating_flips(plan, 1000, seed=3, epoch=e)
    for e, plan in ((0, plan0), (1, plan1), (2, plan0))
  ]
  assert flips[0].shape == plan0.shape and flips[0].dtype == bool
  side = [np.empty(1000, bool) for _ in range(2)]
  side[0][plan0.ravel()] = flips[0].ravel()
  side[1][plan1.ravel()] = flips[1].ravel()
  assert (side[0] != side[1]).all()  # every image mirrored in exactly one of two epochs
  assert 400 < side[0].sum() < 600  # the first side is a fair coin per image
  np.testing.assert_array_equal(flips[2], flips[0])  # even epochs repeat epoch 0
  other_seed = input_pipeline.alternating_flips(plan0, 1000, seed=4, epoch=0)
  assert (other_seed != flips[0]).any()


def test_gather_mirrors_exactly_the_flagged_images():
  from cifar_jax import parallel

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  par = parallel.DataParallel("jit", 1)
  data = par.put_dataset({"image": images, "label": np.arange(8, dtype=np.int32)})
  gather = par.make_gather()
  indices = np.array([5, 2, 7, 0], np.int32)
  flips = np.array([True, False, False, True])
  batch = gather(data, indices, flips)
  want = images[indices].copy()
  want[flips] = want[flips][:, :, ::-1]
  np.testing.assert_array_equal(np.asarray(batch["image"]), want)
  np.testing.assert_array_equal(np.asarray(gather(data, indices)["image"]), images[indices])
