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


def _save_two(workdir, best_metric):
  writer = checkpoint.Checkpointer(workdir, best_metric=best_metric)
  writer.save(1, {"w": np.ones(4, np.float32)}, {"eval_accuracy": 0.9, "ema_eval_accuracy": 0.5})
  writer.save(2, {"w": np.zeros(4, np.float32)}, {"eval_accuracy": 0.6, "ema_eval_accuracy": 0.8})
  writer.close()


def test_best_is_chosen_by_the_configured_metric(tmp_path):
  """An EMA run's best/ is the save whose EMA weights scored best: the
  weights --mode=eval, predict and export then use."""
  template = {"w": np.zeros(4, np.float32)}
  for metric, best_step in (("eval_accuracy", 1), ("ema_eval_accuracy", 2)):
    _save_two(tmp_path / metric, metric)
    assert [p.name for p in (tmp_path / metric / "best").iterdir()] == [str(best_step)]
    reader = checkpoint.Checkpointer(tmp_path / metric, read_only=True, best_metric=metric)
    _, meta = reader.restore(template, "best_or_latest")
    reader.close()
    assert meta["step"] == best_step
