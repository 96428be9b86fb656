"""ResNet under 5M parameters (4,697,162 at the defaults): SGD 0.1, wd 5e-4,
cosine, 200 epochs, crop + flip + cutout. The design fields are those of
configs/search_resnet_budget.py; set them to a search result to train it.

`:budget` (configs/base.py `budget_convnet`): 11 epochs, one-cycle to lr 0.2,
crop+flip without cutout (~7.3 minutes an epoch in bf16 on the 2-core Zen 5;
3 in fp32 on a Zen 3).
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  config.model.name = "resnet_budget"
  config.model.stage_sizes = (4, 4, 3)
  config.model.widths = (64, 128, 256)
  config.model.kernel_sizes = (3, 3, 3)
  config.model.skip_kernel_sizes = (1, 1, 1)
  config.model.pool_size = 8
  config.num_epochs = 200
  config.augment = "crop(pad=4)|flip|cutout(size=8)"
  return base.variant(config, variant, budget=budget)


def budget(config):
  config.augment = "crop(pad=4)|flip"  # cutout regularises long runs only
  return base.budget_convnet(config, num_epochs=11, learning_rate=0.2)
