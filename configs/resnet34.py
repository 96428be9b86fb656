"""CIFAR ResNet34: ResNet18's recipe."""
from configs import resnet18


def get_config():
  config = resnet18.get_config()
  config.model.name = "resnet34"
  return config
