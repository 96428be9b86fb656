"""CIFAR ResNet18: SGD 0.1, momentum 0.9, wd 5e-4, cosine, 200 epochs, batch 128.

`:budget` (configs/base.py `budget_convnet`): 5 epochs, one-cycle to lr 0.2.
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  config.model.name = "resnet18"
  config.model.dropout_rate = 0.0
  config.model.activation = "relu"
  config.num_epochs = 200
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_convnet(config, num_epochs=5, learning_rate=0.2)
