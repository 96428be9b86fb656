"""Throughput of a config's input pipeline, train step and eval step.

`benchmark(config, steps)` assembles the run with `run.build_run` exactly as
training does (same layout, compute form, step options) and times it on
random uint8 data on the device, which costs what real CIFAR batches cost
once loaded. `input_img_per_s` times what feeds the step alone: the host
index plan, the on-device gather of a batch and its augmentation and
normalisation (an upper bound the step cannot exceed because of input).
The command line is scripts/benchmark.py; compare against PyTorch only
within one run on one machine (scripts/compare_torch.py).
"""

from __future__ import annotations

import importlib
import time
from typing import Any
from typing import Callable

import jax
import ml_collections
import numpy as np

from cifar_jax import input_pipeline
from cifar_jax import run as run_lib

# The columns of a result row, in table order.
COLUMNS = (
  "model",
  "batch",
  "img_per_s",
  "eval_img_per_s",
  "input_img_per_s",
  "compile_s",
  "devices",
  "dtype",
  "conv",
  "params",
)
# Batches of random data the timed steps cycle through.
BATCHES_OF_DATA = 8


def model_config(name: str) -> ml_collections.ConfigDict:
  """cifar_jax/configs/<name>.py when it exists, else the base config with that model."""
  try:
    return importlib.import_module(f"cifar_jax.configs.{name}").get_config()
  except ModuleNotFoundError:
    config = importlib.import_module("cifar_jax.configs.base").get_config()
    config.model.name = name
    return config


def _timed(fn: Callable[[], Any], repeats: int) -> float:
  """Seconds per call of fn() (which must block on its result), after one warm-up call."""
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def random_split(num_examples: int, num_classes: int, seed: int = 0) -> input_pipeline.ArraySplit:
  rng = np.random.default_rng(seed)
  return input_pipeline.ArraySplit(
    "random",
    rng.integers(0, 256, (num_examples,) + input_pipeline.IMAGE_SHAPE, dtype=np.uint8),
    rng.integers(0, num_classes, num_examples).astype(np.int32),
    tuple(f"class_{i}" for i in range(num_classes)),
  )


def benchmark(
  config: ml_collections.ConfigDict, steps: int = 10, evaluate: bool = True
) -> dict[str, Any]:
  """One result row (see COLUMNS) for `config` at its `batch_size` (and
  `eval_batch_size` for the eval step; `evaluate=False` skips it, leaving
  `eval_img_per_s` None: with many TTA views it takes longer than the rest)."""
  batch = config.batch_size
  split = random_split(batch * BATCHES_OF_DATA, config.dataset.num_classes)
  run = run_lib.build_run(config, num_train_examples=len(split))
  state = run.place(run.state)
  data = run.put_split(split)
  train_step, compile_s = run.compile_train(state, data)
  key = jax.random.fold_in(run.state.rng, 0)

  prepare = jax.jit(lambda b, k: run.training_inputs(k, b)[0])
  epoch = [0]

  def feed():
    plan = input_pipeline.train_index_plan(len(split), batch, 0, epoch[0])
    epoch[0] += 1
    for indices in plan:
      out = prepare(run.gather(data, indices), key)
    out.block_until_ready()

  input_s = _timed(feed, max(steps // BATCHES_OF_DATA, 2)) / BATCHES_OF_DATA

  # With a data filter (speedrun93) the step trains on the first rows of each
  # device's share, as many as the proxy keeps; the proxy's pass is not timed.
  plan = input_pipeline.train_index_plan(len(split), batch, 0, 0)
  batches = [run.train_batch(data, i) for i in plan]
  holder = {"state": state}

  def run_steps():
    s = holder["state"]
    for i in range(steps):
      s, m = train_step(s, batches[i % len(batches)], key)
    jax.block_until_ready(m)
    holder["state"] = s

  train_s = _timed(run_steps, 1) / steps

  eval_img_per_s = None
  if evaluate:
    evaluator = run.evaluator(split, holder["state"], data=data)
    eval_img_per_s = round(len(split) / _timed(lambda: evaluator.run(holder["state"]), 1), 1)
  return {
    "model": config.model.name,
    "batch": batch,
    "img_per_s": round(batch / train_s, 1),
    "eval_img_per_s": eval_img_per_s,
    "compile_s": round(compile_s, 2),
    "input_img_per_s": round(batch / input_s, 1),
    "devices": run.par.num_devices,
    "dtype": run.compute.dtype_name,
    "conv": run.compute.conv,
    "params": run.meta["param_count"],
  }


def table(rows: list[dict[str, Any]]) -> str:
  widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
  lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
  lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)) for r in rows]
  return "\n".join(lines)
