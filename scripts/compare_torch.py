"""JAX vs PyTorch training throughput for the same models, measured in one run.

    python scripts/compare_torch.py --torch_python=~/.venvs/torchref/bin/python \
        --models=resnet18,my_cnn --batch=128 --rounds=2

For each model and round it times the JAX train step (scripts/benchmark.py)
and then PyTorch's, back to back, so both see the same machine load. It
prints one JSON line per measurement and a table of the ratio JAX / PyTorch
per round and their median. Absolute images/s drift on shared machines; only
the ratios are meaningful.

PyTorch runs in a Python that has torch installed (`--torch_python`; torch is
not a dependency of this project), with one of two scripts:

- resnet18, my_cnn, speedrun (and any model the zoo has no reference for):
  ../shared/bench/torch_reference.py (`--torch_script`), PyTorch ports of
  those networks;
- the zoo: resnet34, resnet50, mobilenet_v2, efficientnet_b0/b1,
  swin_tiny/small, vit_tiny/small: scripts/torch_zoo_bench.py
  (`--torch_zoo_script`), the torchvision/timm network that our model equals
  at the CIFAR settings (cifar_jax/models/torch_reference.py; the Python
  needs torchvision and timm too, e.g. the `reference` extra), timed as
  torch_reference.py times its own, with the stochastic depth and dropout
  rates of the model's config, which the JAX side trains with:

    python scripts/compare_torch.py --torch_python=$(which python) \
        --models=resnet50,mobilenet_v2,efficientnet_b0,vit_tiny,swin_tiny --rounds=3

PyTorch's step updates the weights with SGD, as torch_reference.py's does;
JAX's with the config's optimizer (AdamW for the transformers): a small part
of either step next to the forward and backward passes.

Each framework runs in its best precision for the CPU by default: JAX with
half_precision=auto, PyTorch in bf16 autocast + channels-last (bf16_cl) where
the CPU computes bf16 natively and fp32 channels-last (fp32_cl) elsewhere.
`--isa=AVX2` sets ONEDNN_MAX_CPU_ISA for both (PyTorch's convolutions are
oneDNN's too), which makes any newer CPU behave as one without AVX-512 or bf16.

JAX's entry points run glibc malloc with transparent huge pages
(cifar_jax/host_memory.py). PyTorch runs with the default allocator, as
torch_reference.py does on its own, unless `--torch_malloc=huge_pages` gives
it the same setting, for a like-for-like comparison of the two frameworks.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Sequence

from absl import flags

from cifar_jax import cli
from cifar_jax import host_memory

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TORCH_SCRIPT = os.path.join(HERE, "..", "..", "shared", "bench", "torch_reference.py")
DEFAULT_TORCH_ZOO_SCRIPT = os.path.join(HERE, "torch_zoo_bench.py")
# The networks that ../shared/bench/torch_reference.py defines.
SHARED_REFERENCE_MODELS = ("resnet18", "my_cnn", "speedrun")


def define_torch_flags(flag_values: flags.FlagValues) -> None:
  """--torch_python and --torch_script, as every script that times PyTorch takes them."""
  flags.DEFINE_string(
    "torch_python",
    os.path.expanduser("~/.venvs/torchref/bin/python"),
    "A Python with torch installed.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "torch_script", DEFAULT_TORCH_SCRIPT, "PyTorch's benchmark script.", flag_values=flag_values
  )


FLAGS = flags.FlagValues()
define_torch_flags(FLAGS)
flags.DEFINE_string(
  "torch_zoo_script",
  DEFAULT_TORCH_ZOO_SCRIPT,
  "PyTorch's benchmark script for the zoo's torchvision/timm networks.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "torch_mode",
  "best",
  "fp32, fp32_cl, bf16_cl, or best: bf16_cl where the CPU has native bf16, else fp32_cl.",
  flag_values=FLAGS,
)
flags.DEFINE_list("models", ["resnet18", "my_cnn"], "Models to compare.", flag_values=FLAGS)
flags.DEFINE_integer("batch", 128, "Batch size of both.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Timed steps per measurement.", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 2, "Back-to-back rounds of every model.", flag_values=FLAGS)
flags.DEFINE_enum(
  "torch_malloc",
  "default",
  ["default", "huge_pages"],
  "PyTorch's glibc malloc: default, or with transparent huge pages as JAX's entry points use.",
  flag_values=FLAGS,
)
flags.DEFINE_enum(
  "half_precision",
  "auto",
  ["true", "false", "auto"],
  "JAX's config.half_precision.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "isa", None, "ONEDNN_MAX_CPU_ISA for both frameworks, e.g. AVX2.", flag_values=FLAGS
)
flags.DEFINE_list(
  "conv_backends",
  ["auto"],
  "JAX convolution backends to time (auto, onednn, xla).",
  flag_values=FLAGS,
)


def _run_json_lines(cmd: list[str], env: dict[str, str] | None = None) -> list[dict]:
  out = subprocess.run(
    cmd,
    check=True,
    capture_output=True,
    text=True,
    env=dict(env or os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
  ).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def uses_zoo_script(model: str) -> bool:
  """Whether PyTorch's side of ``model`` is scripts/torch_zoo_bench.py's
  torchvision/timm network (else torch_reference.py's own port)."""
  from cifar_jax.models import torch_reference  # pylint: disable=import-outside-toplevel

  return model not in SHARED_REFERENCE_MODELS and model in torch_reference.NAMES


def zoo_rates(model: str) -> dict[str, float]:
  """The stochastic depth and dropout rates that JAX trains ``model`` with
  (its config's, cifar_jax.benchmark.model_config), as torch_zoo_bench.py's
  flags; a rate the config leaves unset is our model's default on both sides."""
  from cifar_jax import benchmark  # pylint: disable=import-outside-toplevel

  options = benchmark.model_config(model).model
  rates = {
    "drop_path_rate": options.get("drop_path_rate", options.get("drop_connect_rate")),
    "dropout_rate": options.get("dropout_rate", options.get("drop_rate")),
  }
  return {k: float(v) for k, v in rates.items() if v is not None}


def torch_command(
  model: str, python: str, script: str, zoo_script: str, mode: str, batch: int, steps: int
) -> list[str]:
  """PyTorch's side of ``model``: torch_reference.py (``script``) for the
  models it defines, torch_zoo_bench.py (``zoo_script``) for the zoo's."""
  common = [f"--models={model}", f"--modes={mode}", f"--batch={batch}", f"--steps={steps}"]
  if not uses_zoo_script(model):
    return [python, script] + common
  return [python, zoo_script] + common + [f"--{k}={v}" for k, v in zoo_rates(model).items()]


def torch_environment(malloc: str) -> dict[str, str]:
  """The environment for PyTorch: this one without glibc's huge-page tunable
  ("default") or with it ("huge_pages")."""
  if malloc not in ("default", "huge_pages"):
    raise ValueError(f"--torch_malloc={malloc!r}: use 'default' or 'huge_pages'.")
  env = dict(os.environ)
  tunables = host_memory.tunables_with(
    env.pop(host_memory.TUNABLES_ENV, ""), huge_pages=malloc == "huge_pages"
  )
  if tunables:
    env[host_memory.TUNABLES_ENV] = tunables
  return env


def settle_machine(isa: str | None, torch_mode: str = "best"):
  """Sets ONEDNN_MAX_CPU_ISA (before oneDNN loads, here and in the children),
  prints the CPU line every measurement starts with, and returns the machine
  and PyTorch's mode ("best": bf16_cl where the CPU has native bf16, else
  fp32_cl)."""
  if isa:
    os.environ["ONEDNN_MAX_CPU_ISA"] = isa
  from cifar_jax import precision  # pylint: disable=import-outside-toplevel

  machine = precision.Machine.detect()
  if torch_mode == "best":
    torch_mode = "bf16_cl" if machine.native_bf16 else "fp32_cl"
  print(
    f"# CPU: {machine.cpu_isa}, native bf16: {machine.native_bf16}; "
    f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}",
    flush=True,
  )
  return machine, torch_mode


def main(argv: Sequence[str] | None = None) -> None:
  cli.parse_own_flags(FLAGS, argv, "scripts/compare_torch.py", __doc__)
  args = FLAGS
  machine, torch_mode = settle_machine(args.isa, args.torch_mode)
  backends = args.conv_backends
  torch_env = torch_environment(args.torch_malloc)
  ratios: dict[tuple[str, str], list[float]] = {(m, b): [] for m in args.models for b in backends}
  for round_index in range(args.rounds):
    for model in args.models:
      jax_rows = []
      for backend in backends:
        jax_cmd = [
          sys.executable,
          os.path.join(HERE, "benchmark.py"),
          f"--models={model}",
          f"--batch={args.batch}",
          f"--steps={args.steps}",
          "--noeval",  # only the train step is compared
          "--json",
          f"--conv_backend={backend}",
        ]
        jax_cmd.append(f"--half_precision={args.half_precision}")
        jax_rows.append(_run_json_lines(jax_cmd)[0])
      torch_cmd = torch_command(
        model,
        args.torch_python,
        args.torch_script,
        args.torch_zoo_script,
        torch_mode,
        args.batch,
        args.steps,
      )
      torch_row = _run_json_lines(torch_cmd, env=torch_env)[0]
      for backend, jax_row in zip(backends, jax_rows):
        ratio = jax_row["img_per_s"] / torch_row["img_per_s"]
        ratios[(model, backend)].append(ratio)
        print(
          json.dumps(
            {
              "round": round_index,
              "model": model,
              "jax_img_per_s": jax_row["img_per_s"],
              "jax_dtype": jax_row["dtype"],
              "jax_conv": jax_row["conv"],
              "torch_img_per_s": torch_row["img_per_s"],
              "torch_mode": torch_mode,
              "torch_script": os.path.basename(torch_cmd[1]),
              "torch_malloc": args.torch_malloc,
              "cpu_isa": machine.cpu_isa,
              "ratio": round(ratio, 3),
            }
          ),
          flush=True,
        )
  print(f"\n{'model':<16} {'conv':<8} {'JAX / PyTorch (' + torch_mode + ')':<28} median")
  for (model, backend), values in ratios.items():
    print(
      f"{model:<16} {backend:<8} {', '.join(f'{v:.2f}' for v in values):<28} "
      f"{statistics.median(values):.2f}"
    )


if __name__ == "__main__":
  cli.start_program()
  main()
