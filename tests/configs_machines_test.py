"""Every config in configs/ trains on every kind of CPU a user has.

Each test runs this file as a script in a fresh process (oneDNN reads
ONEDNN_MAX_CPU_ISA once, when it starts) with one device, as a user's run
has: every config trains two steps on tiny data, and the test checks that
none crashes, every loss is finite and the printed "Compute:" line is the one
`precision.choose` gives for that machine:
  (a) under ONEDNN_MAX_CPU_ISA=AVX2 (a CPU without bf16) with its own precision,
  (b) with conv_backend=xla (the GPU and macOS path), natively,
  (c) with half_precision=True under ONEDNN_MAX_CPU_ISA=AVX2;
(b) and (c) leave out the configs that only repeat another's code paths
(`SAME_PATHS_AS`).
"""

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("base", "__init__"))
BATCH = 8
# Configs whose shrunk model and recipe take the code paths of another one
# (the config beside it): (a) trains them all, (b) and (c) only the other.
SAME_PATHS_AS = {
  "resnet34": "resnet18",
  "efficientnet_b1": "efficientnet_b0",
  "swin_small": "swin_tiny",
  "vit_small": "vit_tiny",
  "search_resnet_budget": "resnet_budget",
  "speedrun93": "speedrun",  # its data filter and residual groups run in (a)
  "speedrun_muon": "speedrun",  # Muon updates fp32 params whatever the compute
}
MARK = "=== config "
MODES = {
  "isa_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
  "xla": ({}, {"conv_backend": "xla"}),
  "bf16_isa_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"half_precision": True}),
}


def configs_for(mode: str) -> list[str]:
  if mode == "isa_avx2":
    return CONFIG_NAMES
  return [name for name in CONFIG_NAMES if name not in SAME_PATHS_AS]


def tiny_config(name: str, overrides: dict, compile_cache: str):
  """configs/<name>.py on one device, batch 8, one epoch, no evaluation, its
  model shrunk to the family's small variant (models_test.SMALL) so that
  compiling 17 configs three times fits the suite: the same modules, dtypes
  and convolution paths, at a fraction of the size."""
  from models_test import SMALL

  config = importlib.import_module(f"cifar_jax.configs.{name}").get_config()
  config.model.update(SMALL.get(config.model.name, {}))
  config.num_epochs = 1
  config.batch_size = config.eval_batch_size = BATCH
  config.parallel = "jit"
  config.compilation_cache_dir = compile_cache
  config.checkpoint.every_epochs = 1
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def _train_every_config(mode: str, workdir: str, compile_cache: str) -> None:
  import jax

  from cifar_jax import train

  jax.devices()  # starts the backend on one device, before conftest adds fake ones
  from conftest import make_split

  split = make_split(2 * BATCH, learnable=True)
  for name in configs_for(mode):
    print(MARK + name, file=sys.stderr, flush=True)
    config = tiny_config(name, MODES[mode][1], compile_cache)
    start = time.perf_counter()
    record = train.train_and_evaluate(config, Path(workdir) / name, train_split=split)
    print(
      json.dumps(
        {
          "config": name,
          "steps": record["step"],
          "seconds": round(time.perf_counter() - start, 1),
          "train_loss": record["train_loss"],
        }
      ),
      flush=True,
    )


def _expected_notices(mode: str, compile_cache: str) -> dict[str, str]:
  from cifar_jax import cpu_conv
  from cifar_jax import precision

  machine = precision.Machine.detect()
  if MODES[mode][0].get("ONEDNN_MAX_CPU_ISA") == "AVX2" and cpu_conv.available():
    machine = precision.Machine("cpu", "avx2", False, None, onednn_f32=True, onednn_bf16=False)
  return {
    name: precision.choose(
      tiny_config(name, MODES[mode][1], compile_cache),
      num_devices=1,
      parallel="jit",
      machine=machine,
    ).notice
    for name in configs_for(mode)
  }


def _check_mode(mode: str, tmp_path, compile_cache: str) -> None:
  # One device, as a user's run has; two steps need no optimised machine code,
  # and without LLVM's optimisations 19 compilations take a third less time.
  from conftest import FAST_COMPILE_FLAGS  # not at the top: this file is also the child's script

  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE_FLAGS, **MODES[mode][0]}
  proc = subprocess.run(
    [sys.executable, __file__, mode, str(tmp_path), compile_cache],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = {r["config"]: r for r in map(json.loads, proc.stdout.splitlines())}
  assert sorted(rows) == configs_for(mode)
  for row in rows.values():
    assert row["steps"] == 2 and math.isfinite(row["train_loss"]), row
  printed = {}
  for block in proc.stderr.split(MARK)[1:]:
    name, _, log = block.partition("\n")
    printed[name] = [line for line in log.splitlines() if line.startswith("Compute: ")]
  for name, notice in _expected_notices(mode, compile_cache).items():
    assert printed[name] == [notice], name


def test_every_config_trains_on_a_cpu_without_bf16(tmp_path, compile_cache):
  _check_mode("isa_avx2", tmp_path, compile_cache)


def test_every_config_trains_with_xla_convolutions(tmp_path, compile_cache):
  _check_mode("xla", tmp_path, compile_cache)


def test_every_config_trains_in_bf16_on_a_cpu_without_bf16(tmp_path, compile_cache):
  _check_mode("bf16_isa_avx2", tmp_path, compile_cache)


if __name__ == "__main__":
  sys.path[:0] = [str(CONFIG_DIR.parent), str(Path(__file__).resolve().parent)]
  _train_every_config(*sys.argv[1:])
