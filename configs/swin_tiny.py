"""Swin-Tiny from scratch on CIFAR-10 (data-hungry): AdamW, wd 0.05, 10 warm-up
epochs + cosine, 300 epochs, RandAugment + crop/flip + mixup/cutmix, label
smoothing 0.1, gradient clipping 5.0."""
from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "swin_tiny"
  config.model.drop_path_rate = 0.1
  config.num_epochs = 300
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = 5.0
  config.schedule.warmup_epochs = 10.0
  config.label_smoothing = 0.1
  config.augment = ("crop(pad=4)|flip|randaugment(n=2, m=9)|"
                    "random_choice(p=0.5, ops=['mixup(alpha=0.8)', 'cutmix(alpha=1.0)'])")
  return config
