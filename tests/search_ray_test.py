"""The Ray Tune backend: trials run and recorded, and a clear error without Ray."""

import signal
import sys

import pytest

from cifar_jax import search


def test_without_ray_the_backend_says_how_to_install_it(
  search_config, splits, tmp_path, monkeypatch
):
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
  search_config.search.backend = "ray"
  with pytest.raises(search.SearchError, match=r"needs Ray Tune .*pip install -e '\.\[tune\]'"):
    search.run_search(search_config, tmp_path, **splits)


@pytest.mark.slow
def test_ray_backend_runs_the_trials_and_records_them(search_config, splits, tmp_path, monkeypatch):
  ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install ray[tune]`")
  for name, value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
  }.items():
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
