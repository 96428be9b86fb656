"""ViT-Small: ViT-Tiny's recipe at twice the width, with half the peak lr."""

from cifar_jax.configs import vit_tiny


def get_config():
  config = vit_tiny.get_config()
  config.model.name = "vit_small"
  config.optimizer.learning_rate = 5e-4
  return config
