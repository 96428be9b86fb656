"""LeNet-5: Adam with a short cosine schedule; small nets underfit with SGD 0.1."""

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "lenet5"
  config.num_epochs = 40
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 5e-4
  return config
