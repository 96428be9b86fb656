"""CIFAR ResNet34: SGD 0.1, momentum 0.9, wd 5e-4, cosine, 200 epochs, batch 128."""
from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "resnet34"
  config.model.dropout_rate = 0.0
  config.model.activation = "relu"
  config.num_epochs = 200
  return config
