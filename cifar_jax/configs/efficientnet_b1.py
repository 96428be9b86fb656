"""EfficientNet-B1: EfficientNet-B0's recipe (B1 is B0 with depth x1.1).

`:budget`: efficientnet_b0's, 6 epochs (~14 minutes an epoch in bf16 on the
2-core Zen 5; 3 in fp32 on a Zen 3).
"""

from cifar_jax.configs import base
from cifar_jax.configs import efficientnet_b0


def get_config(variant: str | None = None):
  config = efficientnet_b0.get_config()
  config.model.name = "efficientnet_b1"
  return base.variant(config, variant, budget=budget)


def budget(config):
  config = efficientnet_b0.budget(config)
  config.num_epochs = 6
  return config
