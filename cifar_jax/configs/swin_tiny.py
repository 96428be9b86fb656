"""Swin-T (patch 2, window 4) from scratch: the transformer recipe of
configs/base.py with stochastic depth 0.1 and gradient clipping 5.0.

`:budget` (configs/base.py `budget_transformer`): 8 epochs, AdamW one-cycle
to 5e-4 (vit_tiny's rate; 2e-3 broke its fit), crop+flip only (~10.4
minutes an epoch in bf16 on the 2-core Zen 5; on a Zen 3, 4 in fp32 at
~41 images/s, 57.92% validation: see the README's Recipes).
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.transformer_recipe(base.get_config(), learning_rate=1e-3, grad_clip_norm=5.0)
  config.model.name = "swin_tiny"
  config.model.drop_path_rate = 0.1
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_transformer(config, num_epochs=8, learning_rate=5e-4)
