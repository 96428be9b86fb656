"""One process of a multi-process run in tests/distributed_test.py.

    python tests/distributed_worker.py SPEC_JSON

with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (and
JAX_NUM_CPU_DEVICES) in the environment, as scripts/launch_local.py sets
them. SPEC: {"workdir", "parallel", "action": "train" | "eval", "compile_cache",
and optionally "num_epochs", "pause_after_epoch_s" (every process sleeps
after epoch 1, with its checkpoint saved: a window to kill one),
"heartbeat_timeout_s"}. It trains or evaluates `run_config`
on the fake splits of tests/fake_data.py, the same in every process, through
the same library calls `python -m cifar_jax.main` makes.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_data import make_split  # noqa: E402
from fake_data import make_tiny_config  # noqa: E402

TRAIN_EXAMPLES = 96  # 3 steps an epoch at batch 32
EVAL_EXAMPLES = 37  # not a multiple of the global eval batch (16): padded and masked


def run_config(spec):
  """A BatchNorm ResNet without augmentation (random augmentation is per
  device under pmap), so every layout computes the same steps."""
  config = make_tiny_config(spec["compile_cache"])
  config.model.name = "resnet18"
  config.model.width = 8
  config.model.stage_sizes = (1, 1)
  config.augment = ""
  config.optimizer.learning_rate = 0.01
  config.schedule.warmup_epochs = 0.0
  config.num_epochs = spec.get("num_epochs", 2)
  config.eval_batch_size = 16
  config.checkpoint.max_to_keep = 5
  config.parallel = spec["parallel"]
  config.distributed.heartbeat_timeout_s = spec.get("heartbeat_timeout_s", 100)
  return config


def splits():
  return make_split(TRAIN_EXAMPLES, learnable=True), make_split(EVAL_EXAMPLES, seed=1)


def main():
  spec = json.loads(sys.argv[1])
  from cifar_jax import distributed
  from cifar_jax import evaluate
  from cifar_jax import train

  config = run_config(spec)
  distributed.initialize(config)
  train_split, eval_split = splits()
  if spec["action"] == "train":

    def pause(record):
      if record["epoch"] == 1 and spec.get("pause_after_epoch_s"):
        print("paused after epoch 1", file=sys.stderr, flush=True)
        time.sleep(spec["pause_after_epoch_s"])

    train.train_and_evaluate(
      config, spec["workdir"], train_split=train_split, eval_split=eval_split, epoch_callback=pause
    )
  else:
    evaluate.evaluate(config, spec["workdir"], split=eval_split)


if __name__ == "__main__":
  main()
