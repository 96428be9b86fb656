"""MobileNetV2 with CIFAR strides: SGD 0.1, wd 5e-4 (4e-5 on ImageNet is too weak
for CIFAR), cosine, 200 epochs.

`:budget` (configs/base.py `budget_convnet`): 18 epochs, one-cycle to lr 0.2,
no dropout (~4.6 minutes an epoch in bf16 on the 2-core Zen 5; 7 in fp32 at
~60 images/s on a Zen 3).
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
  return base.budget_convnet(config, num_epochs=18, learning_rate=0.2)
