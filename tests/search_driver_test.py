"""Running a search: the files it writes, restarting, a changed search space,
a budget nothing fits, diverged trials."""

import json

import pytest
from search_fixtures import BUDGET
from search_fixtures import load_config_file

from cifar_jax import config_checks
from cifar_jax import metrics
from cifar_jax import search
from cifar_jax import train
from cifar_jax.search import space


def test_over_budget_candidates_are_never_trained(search_config, splits, tmp_path, monkeypatch):
  # A budget nothing fits: candidates are drawn and counted, none is trained.
  monkeypatch.setattr(train, "train_and_evaluate", pytest.fail)
  config = search_config
  config.search.param_budget = 100
  config.search.max_candidates = 5
  result = search.run_search(config, tmp_path, **splits)
  assert result["trained"] == [] and result["best"] is None
  state = json.loads((tmp_path / search.STATE_FILE).read_text())
  assert state["rejected_over_budget"] == 5 and state["accepted"] == 0
  assert len((tmp_path / search.REJECTED_FILE).read_text().splitlines()) == 5
  assert not (tmp_path / "trials").exists()


def test_local_search_writes_results_and_a_restart_trains_only_new_trials(
  search_config, splits, tmp_path, count_training
):
  config = search_config
  config.search.flops = True
  first = search.run_search(config, tmp_path, **splits)
  assert count_training == ["t0002", "t0004"]
  assert count_training.rows_before == [0, 1]  # each trial's row is written when it ends
  rows = search.read_trials(tmp_path)
  assert [r["trial_id"] for r in rows] == ["t0002", "t0004"]
  for row in rows:
    assert row["status"] == "completed" and row["epochs"] == 2
    assert 0.0 <= row["final_eval_accuracy"] <= 1.0
    assert row["best_eval_accuracy"] >= row["final_eval_accuracy"]
    assert row["params"] <= BUDGET and row["flops"] > 0 and row["time_s"] > 0
    assert set(search.DESIGN_FIELDS) | {"activation", "dropout_rate"} <= set(row["design"])
  state = json.loads((tmp_path / search.STATE_FILE).read_text())
  assert state["rejected_over_budget"] == 3 and state["best_trial"] == first["best"]["trial_id"]
  assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["t0002", "t0004"]
  assert (tmp_path / search.PLOT_FILE).stat().st_size > 10_000

  # best_config.py: base + the recipe + the best design, loadable by main.
  best = first["best"]
  loaded = load_config_file(tmp_path / search.BEST_CONFIG_FILE)
  assert loaded.model.name == "resnet_budget"
  for key in search.DESIGN_FIELDS:
    expected = best["design"][key]
    assert loaded.model[key] == (tuple(expected) if isinstance(expected, list) else expected)
  assert loaded.num_epochs == 200 and loaded.batch_size == 16 and "search" not in loaded
  config_checks.validate_config(loaded)
  assert space.config_params(loaded) == best["params"]
  assert f"{best['final_eval_accuracy']:.4f}" in (tmp_path / search.BEST_CONFIG_FILE).read_text()

  # Restarted with one more trial: only that one trains.
  config.search.num_trials = 3
  second = search.run_search(config, tmp_path, **splits)
  assert count_training == ["t0002", "t0004", "t0005"] and second["trained"] == ["t0005"]
  ids = [r["trial_id"] for r in search.read_trials(tmp_path)]
  assert ids == ["t0002", "t0004", "t0005"]


def test_a_changed_search_space_is_refused_in_the_same_workdir(search_config, tmp_path):
  row = {
    "trial_id": "t0002",
    "design": {k: None for k in search.DESIGN_FIELDS},
    "epochs": 1,
    "final_eval_accuracy": 0.1,
    "params": 1,
  }
  (tmp_path / search.TRIALS_FILE).write_text(json.dumps(row) + "\n")
  with pytest.raises(search.SearchError, match="another seed or search space"):
    search.run_search(search_config, tmp_path, train_split=None)


def test_diverged_trials_are_final_and_never_the_best(search_config, splits, tmp_path, monkeypatch):
  attempts = []

  def diverging(config, workdir, **kwargs):
    attempts.append(workdir.name)
    raise metrics.NonFiniteLossError("Training loss became NaN/Inf at step 1 (epoch 1).")

  monkeypatch.setattr(train, "train_and_evaluate", diverging)
  result = search.run_search(search_config, tmp_path, **splits)
  assert attempts == ["t0002", "t0004"] and result["best"] is None
  rows = search.read_trials(tmp_path)
  assert [(r["trial_id"], r["status"], r["epochs"]) for r in rows] == [
    ("t0002", "diverged", 0),
    ("t0004", "diverged", 0),
  ]
  state = json.loads((tmp_path / search.STATE_FILE).read_text())
  assert state["finished_trials"] == 2 and state["best_trial"] is None
  assert not (tmp_path / search.BEST_CONFIG_FILE).exists()
  assert search.run_search(search_config, tmp_path, **splits)["trained"] == []
  assert attempts == ["t0002", "t0004"]  # a restart does not retry them
