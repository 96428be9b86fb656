"""The 'Pytorch-Cifar' seed's six-conv net with a standard crop+flip recipe."""

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "my_cnn"
  config.num_epochs = 30
  config.optimizer.learning_rate = 0.05
  return config
