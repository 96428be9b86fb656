"""CIFAR ResNet50: ResNet18's recipe.

`:budget` (configs/base.py `budget_convnet`): 6 epochs, one-cycle to lr 0.2
(~13 minutes an epoch in bf16 on the 2-core Zen 5; at ~8 images/s in fp32 on
a 2-core Zen 3, one epoch is about 90 minutes there).
"""

from cifar_jax.configs import base
from cifar_jax.configs import resnet18


def get_config(variant: str | None = None):
  config = resnet18.get_config()
  config.model.name = "resnet50"
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_convnet(config, num_epochs=6, learning_rate=0.2)
