"""deep_cnn (453k params, BatchNorm + dropout head): SGD 0.05, cosine, 60 epochs."""
from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "deep_cnn"
  config.num_epochs = 60
  config.optimizer.learning_rate = 0.05
  return config
