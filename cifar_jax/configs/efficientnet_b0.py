"""EfficientNet-B0 from scratch on 32x32: SGD 0.1, wd 5e-4, 200 epochs, label
smoothing 0.1; dropout 0.2 and drop_connect 0.2 (the paper's) are the defaults.

`:budget` (configs/base.py `budget_convnet`): 7 epochs, one-cycle to lr 0.2,
dropout 0.1, no drop-connect (~12 minutes an epoch in bf16 on the 2-core
Zen 5; 4 in fp32 at ~35-57 images/s on a Zen 3).
"""

from cifar_jax.configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  config.model.name = "efficientnet_b0"
  config.model.dropout_rate = 0.2
  config.model.drop_connect_rate = 0.2
  config.num_epochs = 200
  config.label_smoothing = 0.1
  config.schedule.warmup_epochs = 3.0
  return base.variant(config, variant, budget=budget)


def budget(config):
  config.model.dropout_rate = 0.1
  config.model.drop_connect_rate = 0.0
  return base.budget_convnet(config, num_epochs=7, learning_rate=0.2)
