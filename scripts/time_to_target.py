"""The speed run against PyTorch's airbench94 on this machine: time to 90.7%.

    python scripts/time_to_target.py --torch_python=~/.venvs/torchref/bin/python --rounds=3

Times, back to back in each round, the train step of `--jax_config`
(default configs/speedrun_muon.py at its own batch, 2000) through
scripts/benchmark.py and the same network's step in PyTorch
(../shared/bench/torch_reference.py --models=speedrun, batch 1024), each in
its best precision for the CPU (as scripts/compare_torch.py chooses it;
`--isa=AVX2` makes both behave as on a CPU without AVX-512). It reports for
each side seconds per epoch (`--examples` images over the measured images/s)
and time to target = epochs to target x seconds per epoch, with the epochs
each needs to reach the target: `--jax_epochs` (default: the config's
`num_epochs`, which for the speed-run configs is what the README's Speed run
section measured reaching it), `--torch_epochs` airbench94's published 9.9. Compilation,
evaluation and data loading are left out on both sides alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
from typing import Sequence

from absl import flags

from cifar_jax import cli

HERE = os.path.dirname(os.path.abspath(__file__))


def _compare_torch():
  """scripts/compare_torch.py, for its process runner and precision choice."""
  spec = importlib.util.spec_from_file_location(
    "compare_torch", os.path.join(HERE, "compare_torch.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


compare_torch = _compare_torch()

FLAGS = flags.FlagValues()
compare_torch.define_torch_flags(FLAGS)
flags.DEFINE_string(
  "jax_config", "speedrun_muon", "cifar_jax/configs/<name>.py to time.", flag_values=FLAGS
)
flags.DEFINE_integer("jax_batch", None, "JAX batch (default: the config's).", flag_values=FLAGS)
flags.DEFINE_integer("torch_batch", 1024, "PyTorch batch (airbench94's).", flag_values=FLAGS)
flags.DEFINE_float(
  "jax_epochs",
  None,
  "Epochs JAX needs to reach the target (default: the config's num_epochs, whose default "
  "is the measured recipe).",
  flag_values=FLAGS,
)
flags.DEFINE_float(
  "torch_epochs", 9.9, "Epochs airbench94 needs (its published figure).", flag_values=FLAGS
)
flags.DEFINE_integer("examples", 50000, "Training images per epoch.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 4, "Timed steps per measurement.", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 3, "Back-to-back rounds.", flag_values=FLAGS)
flags.DEFINE_string(
  "isa", None, "ONEDNN_MAX_CPU_ISA for both frameworks, e.g. AVX2.", flag_values=FLAGS
)


def time_to_target(img_per_s: float, epochs: float, examples: int) -> tuple[float, float]:
  """(seconds per epoch, seconds to the target)."""
  per_epoch = examples / img_per_s
  return per_epoch, epochs * per_epoch


def main(argv: Sequence[str] | None = None) -> None:
  cli.parse_own_flags(FLAGS, argv, "scripts/time_to_target.py", __doc__)
  args = FLAGS
  _, torch_mode = compare_torch.settle_machine(args.isa)
  from cifar_jax import benchmark  # pylint: disable=import-outside-toplevel

  jax_config = benchmark.model_config(args.jax_config)
  jax_batch = args.jax_batch or jax_config.batch_size
  jax_epochs = args.jax_epochs or jax_config.num_epochs
  ratios = []
  for round_index in range(args.rounds):
    jax_row = compare_torch._run_json_lines(
      [
        sys.executable,
        os.path.join(HERE, "benchmark.py"),
        f"--models={args.jax_config}",
        f"--batch={jax_batch}",
        f"--steps={args.steps}",
        "--half_precision=auto",
        "--noeval",  # only the train step counts here
        "--json",
      ]
    )[0]
    torch_row = compare_torch._run_json_lines(
      [
        args.torch_python,
        args.torch_script,
        "--models=speedrun",
        f"--modes={torch_mode}",
        f"--batch={args.torch_batch}",
        f"--steps={args.steps}",
      ],
      env=compare_torch.torch_environment("default"),
    )[0]
    jax_epoch_s, jax_s = time_to_target(jax_row["img_per_s"], jax_epochs, args.examples)
    torch_epoch_s, torch_s = time_to_target(
      torch_row["img_per_s"], args.torch_epochs, args.examples
    )
    ratios.append(jax_s / torch_s)
    print(
      json.dumps(
        {
          "round": round_index,
          "jax_config": args.jax_config,
          "jax_batch": jax_batch,
          "jax_dtype": jax_row["dtype"],
          "jax_img_per_s": jax_row["img_per_s"],
          "jax_epoch_s": round(jax_epoch_s, 1),
          "jax_epochs": jax_epochs,
          "jax_time_to_target_s": round(jax_s, 1),
          "torch_mode": torch_mode,
          "torch_batch": args.torch_batch,
          "torch_img_per_s": torch_row["img_per_s"],
          "torch_epoch_s": round(torch_epoch_s, 1),
          "torch_epochs": args.torch_epochs,
          "torch_time_to_target_s": round(torch_s, 1),
          "ratio": round(ratios[-1], 3),
        }
      ),
      flush=True,
    )
  print(
    f"\nJAX time-to-target / PyTorch's, rounds: {', '.join(f'{r:.2f}' for r in ratios)}; "
    f"median {statistics.median(ratios):.2f}"
  )


if __name__ == "__main__":
  cli.start_program()
  main()
