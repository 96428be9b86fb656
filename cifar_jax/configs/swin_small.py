"""Swin-S: Swin-T's recipe with stochastic depth 0.2 and half the peak lr.

`:budget` (configs/base.py `budget_transformer`): 5 epochs, AdamW one-cycle to
5e-4 (vit_tiny's rate; 2e-3 broke its fit), crop+flip only (~16 minutes an
epoch in bf16 on the 2-core Zen 5; 2 in fp32 on a Zen 3).
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
  return base.budget_transformer(config, num_epochs=5, learning_rate=5e-4)
