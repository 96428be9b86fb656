"""Throughput of the input pipeline, train step and eval step for given models.

    python scripts/benchmark.py --models=resnet18,my_cnn --batch=128 --json

One JSON line per model (or a table without --json):
  {"model", "batch", "img_per_s" (train step after compile), "eval_img_per_s",
   "compile_s", "input_img_per_s", "devices", "dtype", "conv", "params"}

Each model runs its cifar_jax/configs/<model>.py (else the base config with
that model) at --batch, assembled as training assembles it; what is timed is
described in cifar_jax/benchmark.py.
"""

from __future__ import annotations

import json
from typing import Sequence

from absl import flags

from cifar_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_list("models", ["resnet18", "my_cnn"], "Models to time.", flag_values=FLAGS)
flags.DEFINE_integer("batch", 128, "Global train and eval batch size.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Timed train steps per model.", flag_values=FLAGS)
flags.DEFINE_enum(
  "half_precision",
  "false",
  ["true", "false", "auto"],
  "config.half_precision: bf16 compute; auto: bf16 where the device has it natively.",
  flag_values=FLAGS,
)
flags.DEFINE_enum("parallel", "jit", ["jit", "pmap"], "config.parallel.", flag_values=FLAGS)
flags.DEFINE_string(
  "conv_backend",
  "auto",
  "Convolution implementation, config.conv_backend: auto, onednn or xla.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "compilation_cache_dir",
  None,
  'Persistent XLA cache (default: the config\'s; "" turns it off).',
  flag_values=FLAGS,
)
flags.DEFINE_bool(
  "eval", True, "Also time the eval step (with the config's TTA).", flag_values=FLAGS
)
flags.DEFINE_bool("json", False, "One JSON line per model instead of a table.", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  cli.parse_own_flags(FLAGS, argv, "scripts/benchmark.py", __doc__)
  from cifar_jax import benchmark  # jax: after the flags, so --help and errors are fast

  rows = []
  for name in FLAGS.models:
    config = benchmark.model_config(name)
    config.batch_size = config.eval_batch_size = FLAGS.batch
    config.half_precision = {"true": True, "false": False, "auto": "auto"}[FLAGS.half_precision]
    config.parallel = FLAGS.parallel
    config.conv_backend = FLAGS.conv_backend
    if FLAGS.compilation_cache_dir is not None:
      config.compilation_cache_dir = FLAGS.compilation_cache_dir
    try:
      rows.append(benchmark.benchmark(config, FLAGS.steps, evaluate=FLAGS.eval))
    except ValueError as e:  # the config check's or the compute choice's message
      raise SystemExit(f"scripts/benchmark.py: error: {e}") from None
    if FLAGS.json:
      print(json.dumps(rows[-1]), flush=True)
  if not FLAGS.json:
    print(benchmark.table(rows))


if __name__ == "__main__":
  cli.start_program()
  main()
