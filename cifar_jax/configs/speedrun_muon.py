"""The speed run with Muon for the convolutions: airbench94_muon's recipe
(94.01% in 8 epochs on the A100, against airbench94's 9.9), on the same
`speedrun` network, for 7.5 epochs (165 steps of 2000 on 45,000 images).

On the shared JPEG-q75 data, trained on train[:45000], these 7.5 epochs gave
90.92%, 90.86% and 90.76% validation accuracy (seeds 0, 1, 2, bf16,
flip+translate TTA; mean 90.85%), the 90.7% that PyTorch's airbench94
reaches on this CPU being the project's speed-run target. airbench94_muon's
own 8 epochs gave 90.84%, 90.66% and 91.02% (mean 90.84%; before the
one-pass GELU, `models.layers.gelu`). Without the whitening bias's schedule
below 8 epochs gave 90.24% and 90.52% (seeds 0 and 1, black-border TTA),
which is why the config ran 10 before (see the README's Speed run section).

    python -m cifar_jax.main --config=configs/speedrun_muon.py --workdir=runs/speedrun_muon

What changes from configs/speedrun.py (airbench94):
- conv kernels: Muon (`optimizer.name="muon"`), lr 0.24 falling linearly to
  0, Nesterov momentum 0.6, 3 Newton-Schulz steps, each kernel held at norm
  sqrt(out channels); no weight decay on them.
- everything else (head, BatchNorm and whitening biases): Nesterov SGD,
  momentum 0.85, on the same linear decay. airbench94_muon's rates are for a
  summed loss at batch 2000 and a head of unit-std weights times 1/256; for
  this repo's mean loss and the `speedrun` head (PyTorch-default init times
  1/9, the same function at init), its head lr 0.67 is
  0.67 * (9/256)**2 * 2000 = 1.656, its BatchNorm-bias lr 0.053 * 2000 = 106
  = 64x that, and its weight decay (0.004 of the weights per step, scaled by
  the schedule, on every SGD parameter) is 0.004 / 1.656 = 2.42e-3, coupled.
- batch 2000, no EMA and no lookahead (airbench94_muon has neither), no
  warm-up.

Kept from airbench94: label smoothing 0.2, alternating flip, 2-pixel
reflect translations, flip+translate TTA, half_precision="auto" (bf16 where native).
The whitening bias as airbench94_muon trains it: at the BatchNorm-bias rate
(`norm_lr_extra_params`), falling linearly to 0 over the first 3 epochs and
then frozen (`freeze_*`); it added ~0.3 points on each seed measured.
"""

from cifar_jax.configs import speedrun


def get_config():
  config = speedrun.get_config()
  config.num_epochs = 7.5
  config.batch_size = 2000
  config.ema_decay = 0.0
  config.lookahead.every_steps = 0

  config.optimizer.name = "muon"  # base's muon_* defaults are airbench94_muon's
  config.optimizer.momentum = 0.85
  config.optimizer.learning_rate = 0.67 * (9.0 / 256.0) ** 2 * 2000  # = 1.656
  config.optimizer.lr_base_batch_size = 2000
  config.optimizer.weight_decay = 0.004 / config.optimizer.learning_rate
  config.optimizer.norm_lr_multiplier = 0.053 * 2000 / config.optimizer.learning_rate  # = 64

  config.schedule.name = "linear_onecycle"
  config.schedule.pct_start = 0.0
  config.schedule.div_factor = 1.0  # no warm-up: start at the peak
  config.schedule.end_lr_factor = 0.0

  config.optimizer.norm_lr_extra_params = "whiten/bias"
  config.optimizer.freeze_params = "whiten/bias"
  config.optimizer.freeze_after_epochs = 3
  config.optimizer.freeze_lr = "linear"
  return config
