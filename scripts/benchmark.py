"""Throughput of the input pipeline, train step and eval step for given models.

    python scripts/benchmark.py --models=resnet18,my_cnn --batch=128 --json

One JSON line per model (or a table without --json):
  {"model", "batch", "img_per_s" (train step after compile), "eval_img_per_s",
   "compile_s", "input_img_per_s", "devices", "dtype", "conv", "params"}

The data are random uint8 images on the device, which costs exactly what real
CIFAR batches cost once loaded. `input_img_per_s` times what feeds the step:
the host index plan, the on-device gather of a batch and its augmentation and
normalisation (run alone, so it is an upper bound the step cannot exceed
because of input). Compare against PyTorch only within one run on one machine
(see scripts/compare_torch.py).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cifar_jax import host_memory  # noqa: E402

if __name__ == "__main__":  # as cifar_jax.main does, first: it may re-execute the process
  host_memory.use_huge_pages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cifar_jax import augment  # noqa: E402
from cifar_jax import input_pipeline  # noqa: E402
from cifar_jax import optim  # noqa: E402
from cifar_jax import parallel as parallel_lib  # noqa: E402
from cifar_jax import precision  # noqa: E402
from cifar_jax import train  # noqa: E402


def model_config(name: str, half_precision: bool | str, parallel: str, conv_backend: str = "auto",
                 compilation_cache_dir: str | None = None):
  """configs/<name>.py when it exists, else the base config with that model."""
  try:
    config = importlib.import_module(f"configs.{name}").get_config()
  except ModuleNotFoundError:
    config = importlib.import_module("configs.base").get_config()
    config.model.name = name
  config.half_precision = half_precision
  config.parallel = parallel
  config.conv_backend = conv_backend
  if compilation_cache_dir is not None:
    config.compilation_cache_dir = compilation_cache_dir
  return config


def _timed(fn, repeats: int) -> float:
  """Seconds per call of fn() (which must block on its result)."""
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def benchmark(name: str, batch: int, steps: int = 10, half_precision: bool | str = False,
              parallel: str = "jit", conv_backend: str = "auto",
              compilation_cache_dir: str | None = None) -> dict:
  config = model_config(name, half_precision, parallel, conv_backend, compilation_cache_dir)
  config.batch_size = config.eval_batch_size = batch
  train.setup_compilation_cache(config)
  par = parallel_lib.DataParallel(config.parallel)
  compute = train.choose_compute(config, par)
  model = train.create_model(config, compute, par.axis_name)
  tx, _ = optim.create_optimizer(config, 100)
  state = train.create_train_state(config, model, tx)
  params = train.count_params(state.params)
  state = par.replicate(state)

  num_examples = batch * 8
  rng = np.random.default_rng(0)
  data = par.put_dataset({
      "image": rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, num_examples).astype(np.int32)})
  gather = par.make_gather()
  augment_fn = augment.build(config.augment)
  step_fn = functools.partial(train.train_step, augment_fn=augment_fn, num_classes=10,
                              label_smoothing=config.label_smoothing,
                              ema_decay=config.ema_decay, axis_name=par.axis_name)
  key = jax.random.PRNGKey(0)
  train_step, compile_s = par.compile_train(step_fn, state, gather(data, np.arange(batch)), key)

  # Input: index plan + gather + augmentation and normalisation, alone.
  prepare = jax.jit(lambda b, k: train.normalize(augment_fn(
      k, b["image"].astype(np.float32) / 255.0, jax.nn.one_hot(b["label"], 10))[0]))
  epoch = [0]

  def feed():
    plan = input_pipeline.train_index_plan(num_examples, batch, 0, epoch[0])
    epoch[0] += 1
    for indices in plan:
      out = prepare(gather(data, indices), key)
    out.block_until_ready()
  input_s = _timed(feed, max(steps // 8, 2)) / (num_examples // batch)

  batches = [gather(data, i) for i in input_pipeline.train_index_plan(num_examples, batch, 0, 0)]
  holder = {"state": state}

  def run_steps():
    s = holder["state"]
    for i in range(steps):
      s, m = train_step(s, batches[i % len(batches)], key)
    jax.block_until_ready(m)
    holder["state"] = s
  train_s = _timed(run_steps, 1) / steps

  evaluator_split = input_pipeline.ArraySplit(
      "bench", np.asarray(jax.device_get(data["image"])), np.asarray(jax.device_get(data["label"])),
      input_pipeline.CIFAR10_CLASSES)
  evaluator = train.Evaluator(config, par, evaluator_split, holder["state"])
  eval_s = _timed(lambda: evaluator.run(holder["state"]), 1) / num_examples * batch
  return {"model": name, "batch": batch, "img_per_s": round(batch / train_s, 1),
          "eval_img_per_s": round(batch / eval_s, 1), "compile_s": round(compile_s, 2),
          "input_img_per_s": round(batch / input_s, 1), "devices": par.num_devices,
          "dtype": compute.dtype_name, "conv": compute.conv,
          "params": params}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet18,my_cnn")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="timed train steps per model")
  parser.add_argument("--half_precision", nargs="?", const="true", default="false",
                      choices=["true", "false", "auto"],
                      help="config.half_precision: bf16 compute (alone: true); auto: "
                           "bf16 where the device has it natively")
  parser.add_argument("--parallel", default="jit", choices=["jit", "pmap"])
  parser.add_argument("--conv_backend", default="auto", choices=precision.CONV_BACKENDS,
                      help="convolution implementation (config.conv_backend)")
  parser.add_argument("--compilation_cache_dir", default=None,
                      help="persistent XLA cache (default: the config's; \"\" turns it off)")
  parser.add_argument("--json", action="store_true", help="one JSON line per model")
  args = parser.parse_args(argv)
  half_precision = {"true": True, "false": False, "auto": "auto"}[args.half_precision]
  rows = []
  for name in args.models.split(","):
    row = benchmark(name, args.batch, args.steps, half_precision, args.parallel,
                    args.conv_backend, args.compilation_cache_dir)
    rows.append(row)
    if args.json:
      print(json.dumps(row), flush=True)
  if not args.json:
    columns = ["model", "batch", "img_per_s", "eval_img_per_s", "input_img_per_s",
               "compile_s", "devices", "dtype", "conv", "params"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
      print("  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)))


if __name__ == "__main__":
  main()
