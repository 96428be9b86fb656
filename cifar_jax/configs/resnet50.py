"""CIFAR ResNet50: ResNet18's recipe.

`:budget` (configs/base.py `budget_convnet`): 1 epoch, one-cycle to lr 0.2: a
training step ran at ~8 images/s on the 2-core Zen 3 (fp32), so one epoch of
45,000 images is about the 90-minute budget there.
"""

from cifar_jax.configs import base
from cifar_jax.configs import resnet18


def get_config(variant: str | None = None):
  config = resnet18.get_config()
  config.model.name = "resnet50"
  return base.variant(config, variant, budget=budget)


def budget(config):
  return base.budget_convnet(config, num_epochs=1, learning_rate=0.2)
