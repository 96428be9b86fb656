"""deep_cnn (453k params, BatchNorm + dropout head) in 40 epochs: Nesterov SGD
with a linear one-cycle (peak 0.05), wd 5e-4, label smoothing 0.1, crop + flip,
flip test-time augmentation."""

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "deep_cnn"
  config.num_epochs = 40
  config.optimizer.learning_rate = 0.05
  config.schedule.name = "linear_onecycle"
  config.label_smoothing = 0.1
  config.tta = "flip"
  return config
