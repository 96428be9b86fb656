"""ViT-Tiny (patch 4) from scratch: the transformer recipe of configs/base.py
(AdamW, warmup + cosine, 300 epochs, RandAugment, mixup/cutmix, label
smoothing) with stochastic depth 0.1 and gradient clipping 1.0.

`:budget` (configs/base.py `budget_transformer`): 7 epochs, AdamW one-cycle
to 5e-4 (at 2e-3 the fit broke down around the peak; README, Recipes),
crop+flip only (~11.5 minutes an epoch in bf16 on the 2-core Zen 5; 4 in
fp32 at ~34 images/s on a Zen 3).
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.transformer_recipe(base.get_config(), learning_rate=1e-3, grad_clip_norm=1.0)
  config.model.name = "vit_tiny"
  config.model.drop_path_rate = 0.1
  config.model.dropout_rate = 0.0
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_transformer(config, num_epochs=7, learning_rate=5e-4)
