"""ViT-Small: ViT-Tiny's recipe at twice the width, with half the peak lr.

`:budget` (configs/base.py `budget_transformer`): 3 epochs, AdamW one-cycle to
5e-4 (vit_tiny's rate; 2e-3 broke its fit), crop+flip only (~28 minutes an
epoch in bf16 on the 2-core Zen 5; 1 in fp32 on a Zen 3).
"""

from cifar_jax.configs import base
from cifar_jax.configs import vit_tiny


def get_config(variant: str | None = None):
  config = vit_tiny.get_config()
  config.model.name = "vit_small"
  config.optimizer.learning_rate = 5e-4
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_transformer(config, num_epochs=3, learning_rate=5e-4)
