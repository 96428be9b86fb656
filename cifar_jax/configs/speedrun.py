"""airbench94-style speed run: the `speedrun` network (patch-whitening stem,
widths 64/256/256, 1.97M parameters) and Keller Jordan's recipe, translated to
this repo's optimizer, which averages the loss over the batch (airbench sums
it) and takes durations in epochs.

    python -m cifar_jax.main --config=configs/speedrun.py --workdir=runs/speedrun
    # airbench's setting: all 50k training images, evaluated on the test set
    ... --config.dataset.train_split=train --config.dataset.eval_split=test

Translation of airbench94's hyperparameters (its lr 11.5 and wd 0.0153 are
"per 1024 examples" with a summed loss and Nesterov momentum 0.85):
- lr: 11.5 / (1 + 1 / (1 - 0.85)) = 1.5 per batch of 1024 for a mean loss,
  scaled linearly with the batch size (`lr_base_batch_size`).
- weight decay: coupled L2 of 0.0153 / 11.5 = 1.33e-3 on every parameter,
  BatchNorm biases included, which decays the weights by the same
  2e-3 * lr-schedule per step as airbench's.
- BatchNorm biases learn 64x faster without decaying faster
  (`norm_lr_multiplier`, airbench's bias_scaler).
- schedule: airbench's triangle, 0.2x the peak rising linearly to the peak
  at 23% of the steps, then falling linearly to 0.07x.
- label smoothing 0.2; alternating flips (`alternating_flip`: each image
  mirrored in every other epoch, from a random first side) and 2-pixel
  translations (reflect-padded random crops); eval with the 10 flip/translate
  views (2-pixel translations, border reflected; airbench's own TTA uses 6
  views, diagonal 1-pixel translations, and averages logits).
- airbench's lookahead instead of an EMA of the weights: every 5 steps the
  weights move to an EMA whose decay ramps up as (step/total)^3 to 0.95**5
  at the end; the slow weights are evaluated as ema_eval_* (and used by
  `--mode=eval`).
- 10 epochs (airbench: 9.9). On the shared JPEG-q75 data, trained on
  train[:45000], these 10 epochs reached 90.94%, 90.80% and 91.10%
  validation accuracy (seeds 0-2, bf16; mean 90.95%), above the 90.7%
  PyTorch's airbench94 reaches on this CPU. The config ran 12 epochs with a
  per-step EMA of 0.95 until the TTA's translations were found to fill the
  border with black (README, Speed run): 10 epochs then measured 90.54%
  (EMA, seed 0) and 90.64% (lookahead, 3 seeds), and 12 epochs 91.17% (EMA,
  2 seeds). `--config.num_epochs=12 --config.lookahead.every_steps=0
  --config.ema_decay=0.95` runs that older recipe.

Batch 1024, as airbench: its hyperparameters, step count (~430 steps at 45k
images) and lookahead horizon were tuned there. A smaller batch would not buy
throughput on CPU, where a step of a few hundred images already keeps the
cores busy, and memory is no obstacle (2.4 GB peak for the benchmark at batch
512, so about twice that at 1024). With `--config.batch_size=512` the lr
halves by itself.

Not in this config: freezing the whitening bias after 3 epochs, as
airbench94 does (`--config.optimizer.freeze_params=whiten/bias
--config.optimizer.freeze_after_epochs=3`): with lookahead at 10 epochs it
did not help (README).

Compute is `half_precision="auto"`: bf16 where the device has it natively,
as airbench's fp16 on GPU (with oneDNN convolutions on a CPU with
AVX512-BF16 or AMX a step is about 1.4x faster than in float32: 697 -> 507 ms
at batch 256 on the 2-core development CPU), float32 on CPUs without (AVX2),
where bf16 would be slower. The README's speed-run figures say which.

Evaluation, with 10 TTA views for both the weights and the slow weights, costs about
half a training epoch, so it runs only after the last epoch, however many
`--config.num_epochs` asks for (set `--config.eval_every_epochs=1` to watch
progress).
"""

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "speedrun"
  config.num_epochs = 10
  config.batch_size = 1024
  config.half_precision = "auto"
  config.eval_every_epochs = 0  # only after the last epoch
  config.label_smoothing = 0.2
  config.augment = "crop(pad=2, mode='reflect')"
  config.alternating_flip = True
  config.tta = "flip_translate"
  config.ema_decay = 0.0
  config.lookahead.every_steps = 5  # base's decay: 0.95**5, airbench's

  config.optimizer.name = "sgd"
  config.optimizer.nesterov = True
  config.optimizer.momentum = 0.85
  config.optimizer.learning_rate = 11.5 / (1.0 + 1.0 / (1.0 - 0.85))  # = 1.5
  config.optimizer.lr_base_batch_size = 1024
  config.optimizer.weight_decay = 0.0153 / 11.5
  config.optimizer.decay_norm_and_bias = True
  config.optimizer.norm_lr_multiplier = 64.0

  config.schedule.name = "linear_onecycle"
  config.schedule.pct_start = 0.23
  config.schedule.div_factor = 5.0  # starts at 0.2 x peak
  config.schedule.end_lr_factor = 0.07
  return config
