"""checkpoint.latest_step: what a reader (the search) learns without opening
a Checkpointer for writing."""

import numpy as np

from cifar_jax import checkpoint


def test_latest_step_is_none_without_checkpoints_and_creates_nothing(tmp_path):
  assert checkpoint.latest_step(tmp_path / "no_run") is None
  assert not (tmp_path / "no_run").exists()
  (tmp_path / "empty").mkdir()
  assert checkpoint.latest_step(tmp_path / "empty") is None
  assert list((tmp_path / "empty").iterdir()) == []


def test_latest_step_is_the_newest_save(tmp_path):
  writer = checkpoint.Checkpointer(tmp_path, keep_best=False)
  for step in (3, 7):
    writer.save(step, {"w": np.full(4, step, np.float32)})
  writer.close()
  assert checkpoint.latest_step(tmp_path) == 7
