"""MobileNetV2 with CIFAR strides: SGD 0.1, wd 5e-4 (4e-5 on ImageNet is too weak
for CIFAR), cosine, 200 epochs.

`:budget` (configs/base.py `budget_convnet`): 7 epochs (~60 images/s on the
2-core Zen 3), one-cycle to lr 0.2,
no dropout.
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  config.model.name = "mobilenet_v2"
  config.model.width_mult = 1.0
  config.model.dropout_rate = 0.2
  config.num_epochs = 200
  return base.variant(config, variant, budget=budget)


def budget(config):
  config.model.dropout_rate = 0.0
  return base.budget_convnet(config, num_epochs=7, learning_rate=0.2)
