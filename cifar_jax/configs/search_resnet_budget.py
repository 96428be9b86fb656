"""Random search of `resnet_budget` designs under 5M parameters.

    python -m cifar_jax.search --config=configs/search_resnet_budget.py --workdir=runs/search
    python -m cifar_jax.search --config=configs/search_resnet_budget.py --workdir=runs/search \\
        --config.search.backend=ray --config.search.scheduler=asha

Trials train for `search.trial_epochs` on dataset.train_split and are scored
on dataset.eval_split (train[:45000] / train[45000:] from base). Everything
outside `search` is the full-training recipe written into DIR/best_config.py
(like configs/resnet18.py: SGD 0.1, cosine, 200 epochs); the trials use it too,
with num_epochs replaced by search.trial_epochs. The model fields below are
the default design; each trial replaces them with its sampled design.
"""

import ml_collections

from cifar_jax.configs import base


def get_config():
  config = base.get_config()
  config.model.name = "resnet_budget"
  config.model.stage_sizes = (4, 4, 3)  # blocks per stage (one entry per stage)
  config.model.widths = (64, 128, 256)  # channels per stage
  config.model.kernel_sizes = (3, 3, 3)  # conv kernel per stage
  config.model.skip_kernel_sizes = (1, 1, 1)  # projection-shortcut kernel per stage
  config.model.pool_size = 8  # average-pool kernel before the classifier
  config.model.dropout_rate = 0.0
  config.model.activation = "relu"
  config.num_epochs = 200  # of the full training of the best design

  search = config.search = ml_collections.ConfigDict()
  search.num_trials = 20  # trials to train (candidates within the budget)
  search.seed = 0  # candidate i is drawn from numpy's default_rng([seed, i])
  search.param_budget = 5_000_000  # larger candidates are rejected untrained
  search.max_candidates = 10_000  # stop drawing after this many candidates
  search.trial_epochs = 10  # short training budget of a trial
  search.flops = True  # record XLA's forward FLOPs of each trial's model

  # The search space: choices drawn uniformly (per stage where it applies).
  search.num_stages = (2, 3, 4)
  search.blocks = (1, 2, 3, 4, 5)
  search.channels = (32, 64, 128, 256)
  search.nondecreasing_channels = True  # sort a design's widths ascending
  search.kernel_sizes = (3, 5)
  search.skip_kernel_sizes = (1, 3)
  search.pool_sizes = (1, 2, 4, 8)  # among those tiling the last map; else global

  # Early stopping: "none" or "asha" (Ray's ASHAScheduler under Ray, successive
  # halving locally: all trials to grace_period epochs, the best
  # 1/reduction_factor on to grace * reduction_factor, ... up to trial_epochs).
  search.scheduler = "none"
  search.grace_period = 2
  search.reduction_factor = 2

  search.backend = "local"  # local (one trial after another) | ray (Ray Tune)
  search.ray_address = ml_collections.config_dict.placeholder(str)  # None: local Ray
  search.ray_cpus_per_trial = 1.0
  search.ray_gpus_per_trial = 0.0
  search.max_concurrent = 0  # Ray trials at once; 0: as many as resources allow
  search.ray_verbose = 1  # Ray Tune's console output: 0 silent .. 3 detailed
  return config
