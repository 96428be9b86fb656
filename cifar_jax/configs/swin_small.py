"""Swin-S: Swin-T's recipe with stochastic depth 0.2 and half the peak lr."""

from cifar_jax.configs import swin_tiny


def get_config():
  config = swin_tiny.get_config()
  config.model.name = "swin_small"
  config.model.drop_path_rate = 0.2
  config.optimizer.learning_rate = 5e-4
  return config
