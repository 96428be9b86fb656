"""CIFAR ResNet34: ResNet18's recipe.

`:budget` (configs/base.py `budget_convnet`): 11 epochs, one-cycle to lr 0.2
(~7.7 minutes an epoch in bf16 on the 2-core Zen 5; 2 in fp32 on a Zen 3).
"""

from cifar_jax.configs import base
from cifar_jax.configs import resnet18


def get_config(variant: str | None = None):
  config = resnet18.get_config()
  config.model.name = "resnet34"
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_convnet(config, num_epochs=11, learning_rate=0.2)
