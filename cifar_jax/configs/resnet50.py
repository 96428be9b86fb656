"""CIFAR ResNet50: ResNet18's recipe."""

from cifar_jax.configs import resnet18


def get_config():
  config = resnet18.get_config()
  config.model.name = "resnet50"
  return config
