"""Every config file loads, names a registered model and builds its pieces."""

import importlib
import os
import pathlib

import pytest
from conftest import REPO_ROOT

from cifar_jax import augment
from cifar_jax import config_checks
from cifar_jax import models
from cifar_jax import optim
from cifar_jax import run as run_lib

CONFIG_NAMES = sorted(
  p.stem
  for p in pathlib.Path(REPO_ROOT, "configs").glob("*.py")
  if p.stem not in ("__init__", "base")
)


def test_every_registered_model_has_a_config():
  assert set(models.model_names()) <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds(name):
  config = importlib.import_module(f"cifar_jax.configs.{name}").get_config()
  config_checks.validate_config(config)
  assert config.model.name in models.model_names()
  augment.build(config.augment)
  optim.create_optimizer(config, steps_in_epoch=100)
  model = run_lib.create_model(config)
  assert model.num_classes == config.dataset.num_classes


def test_alternating_flip_with_a_random_flip_is_rejected():
  config = importlib.import_module("cifar_jax.configs.speedrun").get_config()
  config_checks.validate_config(config)
  config.augment = "flip|crop(pad=2, mode='reflect')"
  with pytest.raises(ValueError, match="alternating_flip replaces the random flip"):
    config_checks.validate_config(config)


def test_speedrun_evaluates_only_after_the_last_epoch_and_negative_periods_are_rejected():
  config = importlib.import_module("cifar_jax.configs.speedrun").get_config()
  assert config.eval_every_epochs == 0  # speedrun_test checks the loop then evaluates only the last
  config.eval_every_epochs = -1
  with pytest.raises(ValueError, match="eval_every_epochs must be >= 0"):
    config_checks.validate_config(config)


def test_a_config_variant_is_picked_after_a_colon_and_an_unknown_one_is_named():
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  path = os.path.join(REPO_ROOT, "configs", "resnet18.py")
  config_flags.DEFINE_config_file("config", f"{path}:budget", flag_values=values)
  values(["prog"])
  budget = values.config
  full = importlib.import_module("cifar_jax.configs.resnet18").get_config()
  assert (budget.num_epochs, full.num_epochs) == (20, 200)
  assert budget.schedule.name == "onecycle" and budget.half_precision == "auto"
  config_checks.validate_config(budget)
  with pytest.raises(ValueError, match="unknown config variant 'fast'.*':budget'"):
    importlib.import_module("cifar_jax.configs.resnet18").get_config("fast")


# The eleven families of the zoo that have long GPU recipes and a CPU budget one.
BUDGET_FAMILIES = (
  "resnet18",
  "resnet34",
  "resnet50",
  "resnet_budget",
  "mobilenet_v2",
  "efficientnet_b0",
  "efficientnet_b1",
  "vit_tiny",
  "vit_small",
  "swin_tiny",
  "swin_small",
)


@pytest.mark.parametrize("name", BUDGET_FAMILIES)
def test_every_zoo_family_has_a_valid_budget_recipe(name):
  module = importlib.import_module(f"cifar_jax.configs.{name}")
  full, budget = module.get_config(), module.get_config("budget")
  config_checks.validate_config(budget)
  assert budget.model.name == full.model.name
  assert budget.num_epochs < full.num_epochs and budget.half_precision == "auto"
  assert budget.schedule.name == "onecycle" and budget.label_smoothing == 0.1
  optim.create_optimizer(budget, steps_in_epoch=100)
