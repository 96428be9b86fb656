"""CSPDarknet-style net (2.1M params, Mish) for the seed's own 10-epoch budget:
Nesterov SGD with a linear one-cycle (peak 0.1 after 25% of the steps, down
to 0), wd 5e-4, label smoothing 0.1, crop + flip, flip test-time augmentation.
Short budgets leave out cutout: it pays off only over long schedules."""

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "cspnet"
  config.model.activation = "mish"
  config.num_epochs = 10
  config.schedule.name = "linear_onecycle"
  config.label_smoothing = 0.1
  config.tta = "flip"
  return config
