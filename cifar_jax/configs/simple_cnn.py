"""simple_cnn (80k params): the small-net recipe of configs/lenet5.py."""

from cifar_jax.configs import lenet5


def get_config():
  config = lenet5.get_config()
  config.model.name = "simple_cnn"
  return config
