"""What the search tests share: a tiny search, fake splits, a count of the
trials trained. Test modules import the fixtures they use.

The search space is tiny (1-2 stages of 1-2 blocks, 4-8 channels) and trials
train two epochs on fake data, so that every trial compiles and runs in seconds.
With seed 0 and a 3,000-parameter budget, candidates 0, 1 and 3 are over the
budget and 2, 4, 5, 6, ... are trials t0002, t0004, t0005, t0006, ...
"""

import pytest
from absl import flags
from conftest import make_split
from ml_collections import config_flags

from cifar_jax import search
from cifar_jax import train

BUDGET = 3000


@pytest.fixture
def search_config(compile_cache):
  from cifar_jax.configs import search_resnet_budget

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
  """64 training examples: 4 steps an epoch at batch 16."""
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


def load_config_file(path):
  """Loads a config file the way `python -m cifar_jax.main --config=...` does."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", str(path), flag_values=values, lock_config=True)
  values(["cifar_jax"])
  return values.config
