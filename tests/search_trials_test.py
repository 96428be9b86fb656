"""One trial: stopping after the epoch asked for, resuming from there, an
interruption, its progress and its row."""

import pytest

from cifar_jax import checkpoint
from cifar_jax import search
from cifar_jax import train
from cifar_jax import writers
from cifar_jax.search import space
from cifar_jax.search import trials


def test_a_trial_stops_after_the_epoch_asked_for_and_resumes_from_it(
  search_config, splits, tmp_path, count_training
):
  config = search_config
  spec = space.sample_candidates(config)["accepted"][0]
  cfg = space.trial_config(config, spec["design"])
  epochs_seen = []
  trial_dir = trials.train_trial(
    config,
    spec,
    tmp_path,
    **splits,
    until_epoch=1,
    on_epoch=lambda record: epochs_seen.append(record["epoch"]),
  )
  assert trial_dir == tmp_path / "trials" / spec["trial_id"]
  assert epochs_seen == [1]
  assert checkpoint.latest_step(trial_dir) == 4  # saved where it stopped: 4 steps an epoch
  assert trials.epochs_done(cfg, trial_dir, splits["train_split"]) == 1
  progress = trials.trial_progress(trial_dir)
  assert progress["epochs"] == 1 and progress["time_s"] > 0
  assert progress["final_eval_accuracy"] == trials.eval_accuracy_at(trial_dir, 1)
  assert trials.eval_accuracy_at(trial_dir, 2) is None
  row = trials.make_row(config, spec, progress, flops=None)
  assert row["status"] == "stopped" and row["epochs"] == 1
  assert trials.make_row(config, spec, progress, flops=None, status="diverged")["status"] == (
    "diverged"
  )

  # Already there: not trained again. Then on to the end, from epoch 1's checkpoint.
  trials.train_trial(config, spec, tmp_path, **splits, until_epoch=1)
  assert count_training == [spec["trial_id"]]
  trials.train_trial(
    config, spec, tmp_path, **splits, on_epoch=lambda record: epochs_seen.append(record["epoch"])
  )
  assert count_training == [spec["trial_id"]] * 2 and epochs_seen == [1, 2]
  assert [r["epoch"] for r in writers.read_metrics(trial_dir)] == [1, 2]
  row = trials.make_row(config, spec, trials.trial_progress(trial_dir), flops=None)
  assert row["status"] == "completed" and row["epochs"] == 2
  assert row["design"]["widths"] == spec["design"]["widths"]
  assert {"activation", "dropout_rate"} <= set(row["design"])


def test_a_trial_stopped_inside_an_epoch_raises_search_interrupted(
  search_config, splits, tmp_path, monkeypatch
):
  def stopped(config, workdir, **kwargs):  # what Ctrl-C inside the first epoch does
    raise train.TrainingStopped(3, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", stopped)
  spec = space.sample_candidates(search_config)["accepted"][0]
  with pytest.raises(search.SearchInterrupted, match="run the same command again"):
    trials.train_trial(search_config, spec, tmp_path, **splits)
  # A run that returns without its epochs (stop_after_steps) is not taken as done either.
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir, **kwargs: {})
  with pytest.raises(search.SearchInterrupted, match="run the same command again"):
    trials.train_trial(search_config, spec, tmp_path, **splits)
