"""CIFAR ResNet18: SGD 0.1, momentum 0.9, wd 5e-4, cosine, 200 epochs, batch 128.

`:budget` (configs/base.py `budget_convnet`): 20 epochs, one-cycle to lr 0.2
(~4.1 minutes an epoch in bf16 on the 2-core Zen 5; 5 epochs fit 90 minutes
in fp32 on a 2-core Zen 3).
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
  return base.budget_convnet(config, num_epochs=20, learning_rate=0.2)
