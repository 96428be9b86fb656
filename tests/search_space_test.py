"""The search space: seeded sampling, the parameter budget, the settings
checked, a trial's config and its FLOP count."""

import jax.numpy as jnp
import pytest
from search_fixtures import BUDGET  # noqa: F401 (fixture)

from cifar_jax import config_checks
from cifar_jax import precision
from cifar_jax import run as run_lib
from cifar_jax import search
from cifar_jax.search import space


def test_sampling_is_seeded_and_over_budget_candidates_are_rejected(search_config):
  config = search_config
  config.search.num_trials = 4
  first, again = space.sample_candidates(config), space.sample_candidates(config)
  assert first == again
  assert [c["trial_id"] for c in first["accepted"]] == ["t0002", "t0004", "t0005", "t0006"]
  assert [c["index"] for c in first["rejected"]] == [0, 1, 3]
  assert all(c["params"] <= BUDGET for c in first["accepted"])
  assert all(c["params"] > BUDGET for c in first["rejected"])
  # The count is that of the model the trial would train.
  spec = first["accepted"][0]
  model = run_lib.create_model(space.trial_config(config, spec["design"]))
  assert spec["params"] == space.config_params(space.trial_config(config, spec["design"]))
  assert model.widths == tuple(spec["design"]["widths"])
  config.search.seed = 1
  assert space.sample_candidates(config)["accepted"] != first["accepted"]


def test_a_trial_config_trains_the_design_on_the_short_budget(search_config):
  design = {
    "stage_sizes": [1, 2],
    "widths": [4, 8],
    "kernel_sizes": [3, 3],
    "skip_kernel_sizes": [1, 1],
    "pool_size": 16,
  }
  cfg = space.trial_config(search_config, design)
  assert "search" not in cfg and "search" in search_config
  assert cfg.model.stage_sizes == (1, 2) and cfg.model.pool_size == 16
  assert cfg.num_epochs == search_config.search.trial_epochs
  assert cfg.eval_every_epochs == 1 and cfg.checkpoint.every_epochs == 1
  assert cfg.checkpoint.max_to_keep == 1 and not cfg.checkpoint.keep_best
  config_checks.validate_config(cfg)


def test_bad_search_settings_fail_with_the_key(search_config, tmp_path):
  search_config.search.backend = "slurm"
  with pytest.raises(search.SearchError, match="search.backend"):
    search.run_search(search_config, tmp_path)
  search_config.search.backend = "local"
  search_config.search.channels = ()
  with pytest.raises(search.SearchError, match="search.channels"):
    search.run_search(search_config, tmp_path)


def test_trial_flops_are_the_listings_whichever_conv_backend_is_configured(search_config):
  """XLA's cost analysis cannot see into oneDNN's custom calls, so FLOPs are
  counted on the XLA form of the model, whatever the run would compute with."""
  from cifar_jax import cpu_conv
  from cifar_jax.models import summary

  design = {
    "stage_sizes": [1, 1],
    "widths": [8, 16],
    "kernel_sizes": [3, 5],
    "skip_kernel_sizes": [1, 3],
    "pool_size": 4,
  }
  flops = {}
  for backend in ("xla", "onednn", "auto"):
    search_config.conv_backend = backend
    flops[backend] = space.count_flops(space.trial_config(search_config, design))
  listed = summary.model_stats(
    "resnet_budget", **{k: tuple(v) if isinstance(v, list) else v for k, v in design.items()}
  )["flops"]
  assert flops["xla"] == flops["onednn"] == flops["auto"] == listed > 0
  if cpu_conv.available():  # what counting the oneDNN form would have reported
    onednn_form = run_lib.create_model(
      space.trial_config(search_config, design), precision.Compute(jnp.float32, "onednn")
    )
    assert summary.forward_flops(onednn_form) < 0.5 * listed
