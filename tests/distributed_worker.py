"""One process of a multi-process run in tests/distributed_test.py.

    python tests/distributed_worker.py SPEC_JSON

with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (and
JAX_NUM_CPU_DEVICES) in the environment, as scripts/launch_local.py sets
them. SPEC: {"workdir", "parallel", "action": "train" | "eval" (or a list of them,
run in order), "compile_cache", and optionally "num_epochs",
"pause_after_epoch_s" (every process sleeps after epoch 1, with its
checkpoint saved: a window to kill one), "wait_for_signal" ({"process": P,
"step": N}: in a run that starts without a checkpoint, process P prints
"waiting for a signal at step N" after its N-th training step and waits,
up to 120 s, until SIGTERM or SIGINT has reached it, so the stop request
falls on that step; a resumed run does not wait), "heartbeat_timeout_s"}.
It trains or evaluates `run_config` on the fake splits of tests/fake_data.py,
the same in every process, through the same library calls
`python -m cifar_jax.main` makes. Without the JAX_* variables it is one
process on the devices it sees.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

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


def _stop_requested() -> bool:
  """Whether train's SIGTERM/SIGINT handler (`train._StopRequest`) was called."""
  handler = signal.getsignal(signal.SIGTERM)
  return bool(getattr(getattr(handler, "__self__", None), "requested", False))


def _wait_for_signal_at_step(step: int, timeout_s: float = 120) -> None:
  """Makes this process wait for a signal after its `step`-th training step
  (of this run), before the loop asks every process whether to stop."""
  from cifar_jax import metrics

  original_add, count = metrics.Accumulator.add, [0]

  def add(self, step_metrics):
    original_add(self, step_metrics)
    count[0] += "first_bad_step" in step_metrics  # training steps only
    if count[0] == step:
      print(f"waiting for a signal at step {step}", file=sys.stderr, flush=True)
      deadline = time.monotonic() + timeout_s
      while not _stop_requested() and time.monotonic() < deadline:
        time.sleep(0.05)

  metrics.Accumulator.add = add


def main():
  spec = json.loads(sys.argv[1])
  from cifar_jax import distributed

  config = run_config(spec)
  # Before initialize: no process can have started writing checkpoints yet.
  fresh = not any((Path(spec["workdir"]) / "checkpoints").glob("[0-9]*"))
  distributed.initialize(config)
  import jax

  wait = spec.get("wait_for_signal")
  if wait and fresh and jax.process_index() == wait["process"]:
    _wait_for_signal_at_step(wait["step"])
  train_split, eval_split = splits()
  actions = spec["action"] if isinstance(spec["action"], list) else [spec["action"]]
  for action in actions:
    _run(action, spec, config, train_split, eval_split)


def _run(action, spec, config, train_split, eval_split):
  from cifar_jax import evaluate
  from cifar_jax import train

  if action == "train":

    def pause(record):
      if record["epoch"] == 1 and spec.get("pause_after_epoch_s"):
        print("paused after epoch 1", file=sys.stderr, flush=True)
        time.sleep(spec["pause_after_epoch_s"])

    try:
      train.train_and_evaluate(
        config,
        spec["workdir"],
        train_split=train_split,
        eval_split=eval_split,
        epoch_callback=pause,
      )
    except train.TrainingStopped:  # as `python -m cifar_jax.main` exits
      sys.exit(train.TrainingStopped.EXIT_CODE)
  else:
    evaluate.evaluate(config, spec["workdir"], split=eval_split)


if __name__ == "__main__":
  main()
