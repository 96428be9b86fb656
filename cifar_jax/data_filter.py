"""Proxy-model data filtering (airbench96_faster): train on the hard half.

With `config.data_filter.proxy_model.name` set, a small proxy network first
runs over exactly the batches the main run will draw (the same index plans,
flips and augmentation keys, so the same augmented images). In each batch it
keeps the `keep_fraction` of examples with the highest loss, and every
`proxy_train_every`-th step it trains on them (`steps.proxy_step`). The main
run then takes each step on the kept rows only: about half the compute per
drawn batch at the default fraction, spent on the examples that still teach.

The proxy is the main config with `model` replaced by `proxy_model`, no EMA or
lookahead, and `proxy_freeze_params` frozen from the start (airbench's proxy
never trains its whitening bias). Its choice, one (devices, k) array of rows
per step, is saved in the workdir (`SELECTION_FILE`) before the main run's
first step, so a resumed run reuses it; the proxy runs again only when its
settings change (the file records them). A kill during the proxy pass loses
that pass only: it is short next to the main run (airbench96_faster's proxy
is about 4% of the main net's FLOPs per image).
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from cifar_jax import distributed
from cifar_jax import input_pipeline
from cifar_jax import models
from cifar_jax import optim
from cifar_jax import progress
from cifar_jax import workdir as workdir_lib

SELECTION_FILE = "data_filter_selection.npz"

# What the proxy's choice depends on; other keys (logging, evaluation,
# checkpoints, the main model) may change between runs that share it.
_PROXY_KEYS = (
  "seed",
  "num_epochs",
  "batch_size",
  "augment",
  "alternating_flip",
  "label_smoothing",
  "half_precision",
  "conv_backend",
  "parallel",
  "dataset",
  "model",
  "optimizer",
  "schedule",
)


def enabled(config: ml_collections.ConfigDict) -> bool:
  return "data_filter" in config and bool(config.data_filter.proxy_model.get("name"))


def keep_per_device(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """How many rows of each device's share of a batch the main step trains on."""
  kept = int(round(config.batch_size * config.data_filter.keep_fraction))
  return kept // num_devices


def config_errors(config: ml_collections.ConfigDict, num_devices: int | None) -> list[str]:
  if not enabled(config):
    return []
  f = config.data_filter
  errors = []
  fraction = f.keep_fraction
  if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
    errors.append(f"config.data_filter.keep_fraction must be in (0, 1], not {fraction!r}.")
  elif num_devices and isinstance(config.batch_size, int) and config.batch_size > 0:
    kept = config.batch_size * fraction
    if abs(kept - round(kept)) > 1e-6 or round(kept) % num_devices or round(kept) < num_devices:
      errors.append(
        f"config.data_filter.keep_fraction={fraction} keeps {kept:g} of each batch of "
        f"{config.batch_size}: it must keep a whole multiple of the {num_devices} device(s) "
        f"(e.g. keep_fraction=0.5 with batch_size={2 * num_devices * 64})."
      )
  every = f.proxy_train_every
  if not (isinstance(every, int) and every > 0):
    errors.append(
      f"config.data_filter.proxy_train_every must be a positive integer, not {every!r}."
    )
  if f.proxy_model.name not in models.model_names():
    errors.append(
      f"config.data_filter.proxy_model.name must be a model ({', '.join(models.model_names())}), "
      f"not {f.proxy_model.name!r}."
    )
  if config.hard_mining.enabled:
    errors.append(
      "config.data_filter and config.hard_mining both choose the training examples: "
      "turn one of them off."
    )
  return errors


def proxy_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The proxy's run: `config` with the proxy model, no weight averaging and
  `proxy_freeze_params` frozen from the first step."""
  proxy = ml_collections.ConfigDict(config.to_dict())
  f = config.data_filter
  proxy.model = ml_collections.ConfigDict(f.proxy_model.to_dict())
  proxy.ema_decay = 0.0
  if "lookahead" in proxy:
    proxy.lookahead.every_steps = 0
  proxy.optimizer.freeze_params = f.proxy_freeze_params
  proxy.optimizer.freeze_after_epochs = 0.0
  proxy.data_filter.proxy_model = ml_collections.ConfigDict({"name": ""})  # it does not filter
  return proxy


def _fingerprint(config: ml_collections.ConfigDict, num_examples: int, num_devices: int) -> str:
  proxy = proxy_config(config).to_dict()
  settings = {k: proxy.get(k) for k in _PROXY_KEYS}
  settings["num_train_examples"] = num_examples
  settings["num_devices"] = num_devices
  # The main config's: the proxy's own copy has its proxy_model cleared.
  settings["data_filter"] = config.data_filter.to_dict()
  return json.dumps(settings, sort_keys=True, default=str)


def _load(path: Path, fingerprint: str, shape: tuple[int, ...]) -> np.ndarray | None:
  try:
    with np.load(path) as saved:
      if str(saved["fingerprint"]) != fingerprint or saved["rows"].shape != shape:
        print(f"{path} is from other proxy settings: running the proxy again.", file=sys.stderr)
        return None
      return saved["rows"]
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError) as e:
    print(f"{path} is unreadable ({e}): running the proxy again.", file=sys.stderr)
    return None


def _save(path: Path, rows: np.ndarray, fingerprint: str) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, rows=rows, fingerprint=np.asarray(fingerprint))
  workdir_lib.write_atomically(path, buffer.getvalue())


def selection(
  proxy_run: Any,
  main_config: ml_collections.ConfigDict,
  workdir: Path,
  train_data: dict[str, jax.Array],
  num_examples: int,
  base_rng: np.ndarray,
) -> np.ndarray:
  """The rows the main run trains on at each step: (total steps, devices, k).

  Loaded from the workdir when it holds the choice of this proxy on this data;
  else computed by `proxy_run` (a `run.Run` of `proxy_config(main_config)`
  built with `updates_every=proxy_train_every`) over the batches the main run
  draws, using its step keys (from `base_rng`), and saved.
  """
  par, steps_in_epoch = proxy_run.par, proxy_run.steps_in_epoch
  total = optim.total_steps(main_config, steps_in_epoch)
  shape = (total, par.num_devices, keep_per_device(main_config, par.num_devices))
  path = Path(workdir) / SELECTION_FILE
  fingerprint = _fingerprint(main_config, num_examples, par.num_devices)
  rows = _load(path, fingerprint, shape)
  # Every process takes part in the proxy's steps: all or none of them run it.
  if distributed.agree_any(rows is None):
    rows = _run_proxy(proxy_run, main_config, train_data, num_examples, base_rng, shape)
    if distributed.is_primary():
      _save(path, rows, fingerprint)
  return rows


def _run_proxy(
  proxy_run, main_config, train_data, num_examples: int, base_rng, shape
) -> np.ndarray:
  start = time.perf_counter()
  state = proxy_run.place(proxy_run.state)
  proxy_step, compile_s = proxy_run.compile_proxy(state, train_data)
  rows = np.zeros(shape, np.int32)
  steps_in_epoch, c = proxy_run.steps_in_epoch, main_config
  step = 0
  for epoch, rows_in_pass in enumerate(optim.pass_steps(c, steps_in_epoch)):
    plan, flips = input_pipeline.epoch_batches(
      num_examples, c.batch_size, c.seed, epoch, c.alternating_flip
    )
    with progress.bar(rows_in_pass, f"proxy epoch {epoch + 1}/{c.num_epochs:g}") as bar:
      for row in range(rows_in_pass):
        batch = proxy_run.train_batch(train_data, plan[row], None if flips is None else flips[row])
        state, rows[step] = proxy_step(state, batch, jax.random.fold_in(base_rng, step))
        step += 1
        bar.update()
  print(
    f"data filter: proxy {c.data_filter.proxy_model.name} "
    f"({proxy_run.meta['param_count']:,} parameters) chose {shape[1] * shape[2]} of every "
    f"{c.batch_size} images for {shape[0]} steps in {time.perf_counter() - start:.0f}s "
    f"(compiled in {compile_s:.1f}s)",
    file=sys.stderr,
  )
  return rows
