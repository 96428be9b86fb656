"""The local backend's synchronous successive halving."""

import ml_collections

from cifar_jax import search
from cifar_jax import writers
from cifar_jax.search import local


def test_rungs_grow_by_the_reduction_factor_up_to_the_trial_epochs():
  def rungs(scheduler, grace_period, reduction_factor, trial_epochs):
    return local.rungs(
      ml_collections.ConfigDict(
        dict(
          scheduler=scheduler,
          grace_period=grace_period,
          reduction_factor=reduction_factor,
          trial_epochs=trial_epochs,
        )
      )
    )

  assert rungs("none", 1, 2, 10) == [10]
  assert rungs("asha", 1, 2, 10) == [1, 2, 4, 8, 10]
  assert rungs("asha", 2, 3, 18) == [2, 6, 18]
  assert rungs("asha", 5, 2, 5) == [5]


def test_local_successive_halving_stops_the_weaker_half(
  search_config, splits, tmp_path, count_training
):
  config = search_config
  s = config.search
  s.num_trials = 4
  s.scheduler, s.grace_period, s.reduction_factor = "asha", 1, 2
  search.run_search(config, tmp_path, **splits)
  rows = {r["trial_id"]: r for r in search.read_trials(tmp_path)}
  assert len(rows) == 4 and len(count_training) == 6  # 4 trials to epoch 1, 2 to epoch 2
  completed = [i for i, r in rows.items() if r["status"] == "completed"]
  stopped = [i for i, r in rows.items() if r["status"] == "stopped"]
  assert len(completed) == 2 and len(stopped) == 2
  assert all(rows[i]["epochs"] == 2 for i in completed)
  assert all(rows[i]["epochs"] == 1 for i in stopped)
  assert not (tmp_path / "trials" / stopped[0] / "checkpoints" / "8").exists()

  def at_epoch_1(trial):
    return writers.read_metrics(tmp_path / "trials" / trial)[0]["eval_accuracy"]

  assert min(map(at_epoch_1, completed)) >= max(map(at_epoch_1, stopped))
  assert search.best_trial(list(rows.values()))["trial_id"] in completed
