"""MobileNetV2 with CIFAR strides: SGD 0.1, wd 5e-4 (4e-5 on ImageNet is too weak
for CIFAR), cosine, 200 epochs."""

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "mobilenet_v2"
  config.model.width_mult = 1.0
  config.model.dropout_rate = 0.2
  config.num_epochs = 200
  return config
