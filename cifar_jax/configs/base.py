"""Shared defaults for every model config; model files override only what differs.

Durations are in epochs; `cifar_jax.optim.steps_per_epoch` turns them into
steps in one place. Keys added here are the whole vocabulary: a config is
locked before command-line overrides, so a misspelt `--config.<key>` fails.

A config file may also offer variants, picked after a colon:
`--config=configs/resnet18.py:budget` calls `get_config("budget")`. Every
variant goes through `variant()` below, so an unknown one fails the same way.
"""

from typing import Callable

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model: `name` picks the registry entry; every other key is passed to the
  # model's constructor (e.g. dropout_rate, activation, width).
  config.model = ml_collections.ConfigDict({"name": "resnet18"})

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cifar10"
  config.dataset.data_dir = ml_collections.config_dict.placeholder(
    str
  )  # None: TFDS_DATA_DIR or tfds default
  config.dataset.train_split = "train[:45000]"
  config.dataset.eval_split = "train[45000:]"
  config.dataset.num_classes = 10

  # Training-time augmentation spec (see cifar_jax/augment.py) and eval TTA.
  config.augment = "crop(pad=4)|flip"
  config.tta = "none"  # none | flip | flip_translate
  # airbench's alternating flip instead of a random one: each image shows a
  # random side in even epochs and the other in odd ones (leave `flip` out
  # of `augment` then).
  config.alternating_flip = False

  config.num_epochs = 30.0  # a float: a run may end part-way through a pass, as airbench94's 9.9
  config.batch_size = 128  # global, split across devices
  config.eval_batch_size = 500
  config.seed = 0
  # bf16 compute with fp32 params and BN statistics: True, False, or "auto"
  # (bf16 where the device computes it natively; see cifar_jax/precision.py).
  config.half_precision = ml_collections.config_dict.FieldReference(False, field_type=object)
  config.parallel = "jit"  # "jit" (sharded over all devices) or "pmap"
  # Convolutions: "auto" runs them with oneDNN on CPU when possible (several
  # times faster than XLA:CPU; see cifar_jax/cpu_conv.py), "xla" never,
  # "onednn" insists and fails with the reason when it cannot.
  config.conv_backend = "auto"
  config.label_smoothing = 0.0
  config.log_every_steps = 50
  config.eval_every_epochs = 1  # 0: only after the last epoch

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | muon | adam | adamw | lars | lamb
  config.optimizer.learning_rate = 0.1  # peak learning rate
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_norm_and_bias = False  # False: no decay on BN/bias/1-D params
  config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping
  config.optimizer.lr_base_batch_size = 0  # >0: lr *= batch_size / this (linear scaling)
  config.optimizer.norm_lr_multiplier = 1.0  # sgd: lr (not decay) factor of norm-layer params
  # Regex of parameter names ('whiten/bias') that take norm_lr_multiplier too.
  config.optimizer.norm_lr_extra_params = ""
  # Regex of parameter names that stop training after freeze_after_epochs
  # (airbench's whitening bias: 'whiten/bias' after 3 epochs). "": none.
  config.optimizer.freeze_params = ""
  config.optimizer.freeze_after_epochs = 0.0
  # Their rate until then: "schedule" (the run's) or "linear" (falling from
  # the peak rate to 0 at the freeze, as airbench94_muon's whitening bias).
  config.optimizer.freeze_lr = "schedule"
  # muon: conv kernels take Muon steps (orthogonalised Nesterov momentum) at
  # this peak lr, on the schedule's shape; every other parameter takes the sgd
  # settings above. fixed_norm holds each kernel at norm sqrt(out channels).
  # The values are airbench94_muon's (configs/speedrun_muon.py).
  config.optimizer.muon_learning_rate = 0.24
  config.optimizer.muon_momentum = 0.6
  config.optimizer.muon_ns_steps = 3
  config.optimizer.muon_fixed_norm = True

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"  # constant | cosine | onecycle | linear_onecycle | piecewise
  config.schedule.warmup_epochs = 1.0  # constant, cosine, piecewise
  config.schedule.end_lr_factor = 0.0  # cosine, linear_onecycle: final lr = factor * peak
  config.schedule.boundaries_epochs = (100.0, 150.0)  # piecewise
  config.schedule.decay_factor = 0.1  # piecewise: lr *= factor at each boundary
  config.schedule.pct_start = 0.25  # (linear_)onecycle: fraction of steps spent rising
  config.schedule.div_factor = 25.0  # (linear_)onecycle: start lr = peak / div_factor
  config.schedule.final_div_factor = 1e4  # onecycle: end lr = start / this

  # Exponential moving average of the weights (and BN statistics); 0 disables.
  # When on, evaluation also reports ema_eval_* and checkpoints hold the EMA.
  config.ema_decay = 0.0
  # airbench94's lookahead instead of an EMA: every `every_steps` steps the
  # slow weights (evaluated as ema_eval_*) move towards the weights by
  # 1 - decay * (step / total steps)^3 and the weights jump back to them.
  # every_steps 0 disables; airbench94: 5 and 0.95**5.
  config.lookahead = ml_collections.ConfigDict()
  config.lookahead.every_steps = 0
  config.lookahead.decay = 0.95**5

  # Loss-based hard-example mining: from `start_epoch` on, each epoch first
  # measures every training example's loss and then samples examples with
  # probability ~ loss**power, mixed with `uniform_fraction` of uniform.
  config.hard_mining = ml_collections.ConfigDict()
  config.hard_mining.enabled = False
  config.hard_mining.start_epoch = 1  # 0-based epoch of the first mined epoch
  config.hard_mining.power = 1.0
  config.hard_mining.uniform_fraction = 0.5

  # Proxy-model data filtering (airbench96_faster; cifar_jax/data_filter.py):
  # a small `proxy_model` ({"name": ...} plus its options, like `model`) runs
  # over the same batches first and keeps the `keep_fraction` of each with
  # the highest loss, training every `proxy_train_every` steps; the main
  # model trains on those only. `proxy_freeze_params` (a regex, as
  # optimizer.freeze_params) never train in the proxy. name "": off.
  config.data_filter = ml_collections.ConfigDict()
  config.data_filter.proxy_model = ml_collections.ConfigDict({"name": ""})
  config.data_filter.keep_fraction = 0.5
  config.data_filter.proxy_train_every = 4
  config.data_filter.proxy_freeze_params = ""

  # Persistent XLA compilation cache, so a second run of a config skips most
  # of compilation. "" turns it off.
  config.compilation_cache_dir = "~/.cache/cifar_jax/xla"

  # "START,END": a jax.profiler trace of those steps in DIR/tensorboard
  # (TensorBoard's profile tab); see cifar_jax/profiling.py. None: off.
  config.profile_steps = ml_collections.config_dict.placeholder(str)

  config.wandb = ml_collections.ConfigDict()
  config.wandb.project = ml_collections.config_dict.placeholder(str)  # None: off
  config.wandb.mode = "offline"  # offline | online

  # Several processes (hosts) as one run; see cifar_jax/distributed.py. All
  # three None (and auto False): one process. Unset keys fall back to
  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)  # HOST:PORT
  config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
  config.distributed.process_id = ml_collections.config_dict.placeholder(int)
  config.distributed.auto = False  # jax's cluster detection: SLURM, Open MPI, Cloud TPU
  config.distributed.initialization_timeout_s = 300  # waiting for every process to join
  config.distributed.heartbeat_timeout_s = 100  # a process silent this long fails the run

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1
  # Also mid-epoch once this long has passed since the last save, so a kill
  # without warning (SIGKILL, a lost machine) costs at most this much. 0: off.
  config.checkpoint.every_minutes = 10.0
  config.checkpoint.max_to_keep = 2
  config.checkpoint.keep_best = True

  return config


def transformer_recipe(
  config: ml_collections.ConfigDict, *, learning_rate: float, grad_clip_norm: float
) -> ml_collections.ConfigDict:
  """The from-scratch recipe of vision transformers on CIFAR (DeiT-style):
  AdamW with wd 0.05, 10 warm-up epochs + cosine over 300 epochs, RandAugment
  on top of crop/flip, mixup or cutmix on half the examples, label smoothing
  0.1 and gradient clipping."""
  config.num_epochs = 300
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = grad_clip_norm
  config.schedule.warmup_epochs = 10.0
  config.label_smoothing = 0.1
  config.augment = (
    "crop(pad=4)|flip|randaugment(n=2, m=9)|"
    "random_choice(p=0.5, ops=['mixup(alpha=0.8)', 'cutmix(alpha=1.0)'])"
  )
  return config


def variant(
  config: ml_collections.ConfigDict,
  name: str | None,
  **recipes: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict],
) -> ml_collections.ConfigDict:
  """`config` as is for no variant, else `recipes[name](config)`; an unknown
  name raises ValueError listing the ones this file has."""
  if not name:
    return config
  if name not in recipes:
    offered = ", ".join(f"':{n}'" for n in sorted(recipes)) or "none"
    raise ValueError(
      f"unknown config variant {name!r} for model {config.model.name!r}; "
      f"this config file offers: {offered}."
    )
  return recipes[name](config)


def budget_convnet(
  config: ml_collections.ConfigDict, *, num_epochs: float, learning_rate: float
) -> ml_collections.ConfigDict:
  """The short CPU recipe of the convnets (`:budget`, about 90 minutes of
  training on a 2-core CPU): Nesterov SGD on a one-cycle schedule (a quarter
  rising, cosine down), label smoothing 0.1, bf16 where the CPU has it, flip
  TTA. Few epochs want many steps, hence batch 128."""
  config.num_epochs = num_epochs
  config.batch_size = 128
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = learning_rate
  config.schedule.name = "onecycle"
  config.schedule.pct_start = 0.25
  config.label_smoothing = 0.1
  config.half_precision = "auto"
  config.tta = "flip"
  return config


def budget_transformer(
  config: ml_collections.ConfigDict, *, num_epochs: float, learning_rate: float
) -> ml_collections.ConfigDict:
  """The short CPU recipe of the vision transformers (`:budget`): AdamW on a
  one-cycle schedule, label smoothing 0.1, bf16 where native, flip TTA, and
  only crop+flip. RandAugment, mixup/cutmix and stochastic depth regularise
  300-epoch runs; a few epochs are far from overfitting, and they only slow
  the fit there."""
  config.num_epochs = num_epochs
  config.batch_size = 128
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = 0.05
  config.schedule.name = "onecycle"
  config.schedule.pct_start = 0.15
  config.label_smoothing = 0.1
  config.augment = "crop(pad=4)|flip"
  config.model.drop_path_rate = 0.0
  config.half_precision = "auto"
  config.tta = "flip"
  return config
