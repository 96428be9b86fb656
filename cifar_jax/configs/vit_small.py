"""ViT-Small: ViT-Tiny's recipe at twice the width, with half the peak lr.

`:budget` (configs/base.py `budget_transformer`): 1 epoch, AdamW one-cycle to
1e-3, crop+flip only.
"""

from cifar_jax.configs import base
from cifar_jax.configs import vit_tiny


def get_config(variant: str | None = None):
  config = vit_tiny.get_config()
  config.model.name = "vit_small"
  config.optimizer.learning_rate = 5e-4
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_transformer(config, num_epochs=1, learning_rate=1e-3)
