"""EfficientNet-B1: EfficientNet-B0's recipe (B1 is B0 with depth x1.1)."""

from cifar_jax.configs import efficientnet_b0


def get_config():
  config = efficientnet_b0.get_config()
  config.model.name = "efficientnet_b1"
  return config
