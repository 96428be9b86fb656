"""The files of a search directory: trials.jsonl read back after a kill, the
best trial, and best_config.py, which trains with main.py from anywhere."""

import json
import os
import subprocess
import sys

from conftest import FAST_COMPILE_FLAGS
from search_fixtures import load_config_file  # noqa: F401 (fixtures)

from cifar_jax import search
from cifar_jax.search import artifacts


def _row(trial_id, epochs, accuracy, params, status="completed"):
  return {
    "trial_id": trial_id,
    "epochs": epochs,
    "final_eval_accuracy": accuracy,
    "params": params,
    "status": status,
  }


def test_trials_jsonl_keeps_the_whole_lines_of_a_killed_search(tmp_path):
  artifacts.append_trial(tmp_path, _row("t0002", 2, 0.5, 100))
  artifacts.append_trial(tmp_path, _row("t0004", 2, 0.6, 100))
  with open(tmp_path / search.TRIALS_FILE, "a") as f:
    f.write('{"trial_id": "t00')  # a kill in the middle of a line
  assert [r["trial_id"] for r in search.read_trials(tmp_path)] == ["t0002", "t0004"]
  assert search.read_trials(tmp_path / "nothing_yet") == []


def test_the_best_trial_trained_longest_then_scored_best_then_is_smallest():
  rows = [
    _row("long", 4, 0.3, 100),
    _row("short", 2, 0.9, 100),
    _row("diverged", 4, 0.8, 100, status="diverged"),
    _row("unscored", 4, None, 100),
  ]
  assert search.best_trial(rows)["trial_id"] == "long"
  rows.append(_row("better", 4, 0.5, 200))
  assert search.best_trial(rows)["trial_id"] == "better"
  rows.append(_row("smaller", 4, 0.5, 150))
  assert search.best_trial(rows)["trial_id"] == "smaller"
  assert search.best_trial([_row("diverged", 4, 0.8, 100, status="diverged")]) is None
  assert search.best_trial([]) is None


def test_best_config_trains_with_main_from_any_directory(search_config, splits, tmp_path):
  config = search_config
  config.search.num_trials = 1
  best = search.run_search(config, tmp_path / "search", **splits)["best"]
  best_config = tmp_path / "search" / search.BEST_CONFIG_FILE
  assert "from cifar_jax.configs import base" in best_config.read_text()
  assert load_config_file(best_config).model.widths == tuple(best["design"]["widths"])

  # `python -m cifar_jax.main`, with mock data installed in the child first.
  elsewhere = tmp_path / "elsewhere"  # not the repo root: no `configs` to import
  elsewhere.mkdir()
  code = (
    "import runpy, tensorflow_datasets as tfds\n"
    "with tfds.testing.mock_data(num_examples=40):\n"
    "  runpy.run_module('cifar_jax.main', run_name='__main__', alter_sys=True)\n"
  )
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE_FLAGS, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      code,
      f"--config={best_config}",
      f"--workdir={tmp_path / 'best'}",
      "--config.num_epochs=1",
    ],
    cwd=elsewhere,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").open()]
  assert [r["epoch"] for r in records] == [1]
  trained = json.loads((tmp_path / "best" / "config.json").read_text())
  assert trained["model"]["name"] == "resnet_budget"
  assert trained["model"]["widths"] == best["design"]["widths"]
