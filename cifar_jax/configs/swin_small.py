"""Swin-S: Swin-T's recipe with stochastic depth 0.2 and half the peak lr.

`:budget` (configs/base.py `budget_transformer`): 2 epochs, AdamW one-cycle to
1e-3, crop+flip only.
"""

from cifar_jax.configs import base
from cifar_jax.configs import swin_tiny


def get_config(variant: str | None = None):
  config = swin_tiny.get_config()
  config.model.name = "swin_small"
  config.model.drop_path_rate = 0.2
  config.optimizer.learning_rate = 5e-4
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_transformer(config, num_epochs=2, learning_rate=1e-3)
