"""Swin-T (patch 2, window 4) from scratch: the transformer recipe of
configs/base.py with stochastic depth 0.1 and gradient clipping 5.0.

`:budget` (configs/base.py `budget_transformer`): 4 epochs (~31 images/s
on the 2-core Zen 3), AdamW one-cycle to 2e-3, crop+flip only.
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.transformer_recipe(base.get_config(), learning_rate=1e-3, grad_clip_norm=5.0)
  config.model.name = "swin_tiny"
  config.model.drop_path_rate = 0.1
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_transformer(config, num_epochs=4, learning_rate=2e-3)
