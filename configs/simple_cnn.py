"""simple_cnn (80k params): AdamW 2e-3 with a short cosine schedule, like lenet5."""
from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "simple_cnn"
  config.num_epochs = 40
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 5e-4
  return config
