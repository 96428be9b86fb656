"""Command line: train a config into a workdir, or evaluate its checkpoint.

    python -m cifar_jax.main --config=configs/resnet18.py --workdir=runs/r18
    python -m cifar_jax.main --config=configs/resnet18.py --workdir=runs/r18 --mode=eval

Config values are overridden with `--config.<key>=<value>`; the config is
locked, so a misspelt key is an error rather than a silently ignored flag.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cifar_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluations.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval"],
  "train: train (resuming from the workdir's latest checkpoint); "
  "eval: evaluate the workdir's best (else latest) checkpoint.",
)
config_flags.DEFINE_config_file(
  "config", None, "Path to a config file in configs/.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


parse_flags = cli.flags_parser("cifar_jax")


def main(argv):
  cli.start_main(argv)
  # Imported here so that --help stays fast and flag errors come first.
  from cifar_jax import distributed
  from cifar_jax import evaluate
  from cifar_jax import train

  known_errors = cli.user_errors()
  config = cli.config_or_exit("cifar_jax")
  try:
    distributed.initialize(config)  # before anything touches a device
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    else:
      evaluate.evaluate(config, FLAGS.workdir)
  except known_errors as e:
    sys.exit(f"cifar_jax: error: {e}")
  except train.TrainingStopped:  # its one line is printed: resumable, not finished
    sys.exit(train.TrainingStopped.EXIT_CODE)
  except KeyboardInterrupt:  # the second Ctrl-C, possibly in the middle of a save
    sys.exit(
      "cifar_jax: interrupted. The workdir keeps its last complete checkpoint "
      "(a save cut short is cleaned up): run the same command to resume."
    )


if __name__ == "__main__":
  cli.start_program()
  app.run(main, flags_parser=parse_flags)
