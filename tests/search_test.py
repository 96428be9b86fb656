"""Architecture search: seeded sampling, the parameter budget, the files a
search writes, restarting, successive halving and the Ray Tune backend.

The search space is tiny (1-2 stages of 1-2 blocks, 4-8 channels) and trials
train two epochs on fake data, so that every trial compiles and runs in seconds.
With seed 0 and a 3,000-parameter budget, candidates 0, 1 and 3 are over the
budget and 2, 4, 5, 6, ... are trials t0002, t0004, t0005, t0006, ...
"""
import json
import signal

import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from cifar_jax import precision
from cifar_jax import search
from cifar_jax import train
from conftest import make_split

BUDGET = 3000


@pytest.fixture
def search_config(compile_cache):
  from configs import search_resnet_budget
  config = search_resnet_budget.get_config()
  config.batch_size = 16
  config.eval_batch_size = 16
  config.log_every_steps = 2
  config.compilation_cache_dir = compile_cache
  s = config.search
  s.num_trials = 2
  s.param_budget = BUDGET
  s.trial_epochs = 2  # one schedule for all tests: their trials share compilations
  s.flops = False
  s.num_stages = (1, 2)
  s.blocks = (1, 2)
  s.channels = (4, 8)
  s.kernel_sizes = (3,)
  s.skip_kernel_sizes = (1,)
  s.pool_sizes = (8, 16, 32)
  s.ray_verbose = 0
  return config


@pytest.fixture(scope="module")
def splits():
  return {"train_split": make_split(64), "eval_split": make_split(32, seed=1)}


@pytest.fixture
def count_training(monkeypatch):
  """Records train_and_evaluate calls: the trial trained and how many rows
  trials.jsonl had then (in `calls.rows_before`)."""
  class Calls(list):
    rows_before = []
  calls = Calls()
  real = train.train_and_evaluate

  def counting(config, workdir, **kwargs):
    calls.append(workdir.name)
    calls.rows_before.append(len(search.read_trials(workdir.parent.parent)))
    return real(config, workdir, **kwargs)

  monkeypatch.setattr(train, "train_and_evaluate", counting)
  return calls


def _load_config_file(path):
  """Loads a config file the way `python -m cifar_jax.main --config=...` does."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", str(path), flag_values=values,
                                  lock_config=True)
  values(["cifar_jax"])
  return values.config


def test_sampling_is_seeded_and_over_budget_candidates_are_never_trained(
    search_config, splits, tmp_path, monkeypatch):
  config = search_config
  config.search.num_trials = 4
  first, again = search.sample_candidates(config), search.sample_candidates(config)
  assert first == again
  assert [c["trial_id"] for c in first["accepted"]] == ["t0002", "t0004", "t0005", "t0006"]
  assert [c["index"] for c in first["rejected"]] == [0, 1, 3]
  assert all(c["params"] <= BUDGET for c in first["accepted"])
  assert all(c["params"] > BUDGET for c in first["rejected"])
  # The count is that of the model the trial would train.
  spec = first["accepted"][0]
  model = train.create_model(search.trial_config(config, spec["design"]))
  assert spec["params"] == search.count_params(search.trial_config(config, spec["design"]))
  assert model.widths == tuple(spec["design"]["widths"])
  config.search.seed = 1
  assert search.sample_candidates(config)["accepted"] != first["accepted"]

  # A budget nothing fits: candidates are drawn and counted, none is trained.
  monkeypatch.setattr(train, "train_and_evaluate", pytest.fail)
  config.search.seed = 0
  config.search.param_budget = 100
  config.search.max_candidates = 5
  result = search.run_search(config, tmp_path, **splits)
  assert result["trained"] == [] and result["best"] is None
  state = json.loads((tmp_path / search.STATE_FILE).read_text())
  assert state["rejected_over_budget"] == 5 and state["accepted"] == 0
  assert len((tmp_path / search.REJECTED_FILE).read_text().splitlines()) == 5
  assert not (tmp_path / "trials").exists()


def test_local_search_writes_results_and_a_restart_trains_only_new_trials(
    search_config, splits, tmp_path, count_training):
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
  loaded = _load_config_file(tmp_path / search.BEST_CONFIG_FILE)
  assert loaded.model.name == "resnet_budget"
  for key in search.DESIGN_FIELDS:
    expected = best["design"][key]
    assert loaded.model[key] == (tuple(expected) if isinstance(expected, list) else expected)
  assert loaded.num_epochs == 200 and loaded.batch_size == 16 and "search" not in loaded
  train.validate_config(loaded)
  assert search.count_params(loaded) == best["params"]
  assert f"{best['final_eval_accuracy']:.4f}" in (tmp_path / search.BEST_CONFIG_FILE).read_text()

  # Restarted with one more trial: only that one trains.
  config.search.num_trials = 3
  second = search.run_search(config, tmp_path, **splits)
  assert count_training == ["t0002", "t0004", "t0005"] and second["trained"] == ["t0005"]
  ids = [r["trial_id"] for r in search.read_trials(tmp_path)]
  assert ids == ["t0002", "t0004", "t0005"]


def test_a_changed_search_space_is_refused_in_the_same_workdir(search_config, tmp_path):
  row = {"trial_id": "t0002", "design": {k: None for k in search.DESIGN_FIELDS},
         "epochs": 1, "final_eval_accuracy": 0.1, "params": 1}
  (tmp_path / search.TRIALS_FILE).write_text(json.dumps(row) + "\n")
  with pytest.raises(search.SearchError, match="another seed or search space"):
    search.run_search(search_config, tmp_path, train_split=None)


def test_bad_search_settings_fail_with_the_key(search_config, tmp_path):
  search_config.search.backend = "slurm"
  with pytest.raises(search.SearchError, match="search.backend"):
    search.run_search(search_config, tmp_path)
  search_config.search.backend = "local"
  search_config.search.channels = ()
  with pytest.raises(search.SearchError, match="search.channels"):
    search.run_search(search_config, tmp_path)


def test_local_successive_halving_stops_the_weaker_half(
    search_config, splits, tmp_path, count_training):
  from cifar_jax import writers
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


@pytest.mark.slow
def test_ray_backend_runs_the_trials_and_records_them(search_config, splits, tmp_path,
                                                      monkeypatch):
  ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install ray[tune]`")
  for name, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                      "RAY_AIR_NEW_OUTPUT": "0"}.items():
    monkeypatch.setenv(name, value)
  config = search_config
  config.search.backend = "ray"
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  sigint_handler = signal.getsignal(signal.SIGINT)
  try:
    result = search.run_search(config, tmp_path, **splits)
    assert signal.getsignal(signal.SIGINT) is sigint_handler  # Ray's is not left behind
  finally:
    ray.shutdown()
  rows = search.read_trials(tmp_path)
  assert sorted(r["trial_id"] for r in rows) == ["t0002", "t0004"]
  assert all(r["status"] == "completed" and r["epochs"] == 2 for r in rows)
  assert result["failed"] == 0
  assert (tmp_path / "trials" / "t0002" / "metrics.jsonl").exists()
  assert (tmp_path / search.BEST_CONFIG_FILE).exists()


def test_trial_flops_are_the_listings_whichever_conv_backend_is_configured(search_config):
  """XLA's cost analysis cannot see into oneDNN's custom calls, so FLOPs are
  counted on the XLA form of the model, whatever the run would compute with."""
  from cifar_jax import cpu_conv
  from cifar_jax.models import summary
  design = {"stage_sizes": [1, 1], "widths": [8, 16], "kernel_sizes": [3, 5],
            "skip_kernel_sizes": [1, 3], "pool_size": 4}
  flops = {}
  for backend in ("xla", "onednn", "auto"):
    search_config.conv_backend = backend
    flops[backend] = search.count_flops(search.trial_config(search_config, design))
  listed = summary.model_stats("resnet_budget", **{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in design.items()})["flops"]
  assert flops["xla"] == flops["onednn"] == flops["auto"] == listed > 0
  if cpu_conv.available():  # what counting the oneDNN form would have reported
    onednn_form = train.create_model(search.trial_config(search_config, design),
                                     precision.Compute(jnp.float32, "onednn"))
    assert summary.forward_flops(onednn_form) < 0.5 * listed
