"""A real training process killed with SIGKILL at the worst moments resumes
to exactly the run it would have been.

This file is also the training script: `python resilience_test.py WORKDIR
CACHE [FAULT]` trains a tiny lenet5 (5 steps an epoch, 3 epochs, evaluated
and checkpointed every epoch) and, with FAULT, sends itself SIGKILL
- `mid_epoch:N`: after the N-th training step of the process;
- `latest_save:S`: while checkpoints/S is being written (all its files are
  there, the final rename is not);
- `between_saves:S`: the moment checkpoints/S is complete, before best/
  is considered;
- `best_save:S`: while best/S is being written.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from conftest import FAST_COMPILE_FLAGS

from cifar_jax import checkpoint

HERE = Path(__file__).resolve().parent
TIME_KEYS = ("epoch_time_s", "train_img_per_s", "compile_s")
# In this order on one workdir: each run resumes what the previous one left.
FAULTS = ["best_save:5", "mid_epoch:3", "latest_save:10", "between_saves:15"]


def _kill_self():
  os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(fault: str) -> None:
  kind, value = fault.split(":")
  value = int(value)
  if kind == "mid_epoch":
    from cifar_jax import metrics

    original_add, calls = metrics.Accumulator.add, [0]

    def add(self, step_metrics):
      original_add(self, step_metrics)
      calls[0] += "first_bad_step" in step_metrics  # training steps only
      if calls[0] == value:
        _kill_self()

    metrics.Accumulator.add = add
    return
  from orbax.checkpoint._src.path import atomicity

  original_finalize = atomicity.AtomicRenameTemporaryPath.finalize
  folder = {"latest_save": "checkpoints", "between_saves": "checkpoints", "best_save": "best"}[kind]

  async def finalize(self, *args, **kwargs):
    final = Path(str(self._final_path))
    ours = final.name == str(value) and final.parent.name == folder
    if ours and kind != "between_saves":
      _kill_self()  # every file written, not yet renamed into place
    await original_finalize(self, *args, **kwargs)
    if ours:
      _kill_self()

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def _train(workdir: str, compile_cache: str, fault: str | None = None) -> None:
  import jax

  from cifar_jax import train

  jax.devices()  # one device: the backend starts before conftest adds fake ones
  from conftest import make_split
  from conftest import make_tiny_config

  if fault:
    _install_fault(fault)
  config = make_tiny_config(compile_cache)
  config.num_epochs = 3
  train.train_and_evaluate(
    config,
    workdir,
    train_split=make_split(160, learnable=True),
    eval_split=make_split(40, seed=1, learnable=True),
  )


def _run(workdir, compile_cache, fault=None):
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE_FLAGS}
  args = [sys.executable, __file__, str(workdir), compile_cache] + ([fault] if fault else [])
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _final_state(workdir: Path):
  records = [
    {k: v for k, v in r.items() if k not in TIME_KEYS}
    for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  ]
  best = sorted(p.name for p in (workdir / "best").iterdir())
  best_meta = json.loads((workdir / "best" / best[0] / "meta" / "metadata").read_text())
  latest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  import orbax.checkpoint as ocp

  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(latest) / "state")
  best_metrics = {k: v for k, v in best_meta["metrics"].items() if k not in TIME_KEYS}
  return records, best, best_metrics, latest, state["params"]


def test_killed_at_every_kind_of_moment_resumes_to_the_uninterrupted_run(tmp_path, compile_cache):
  reference = _run(tmp_path / "reference", compile_cache)
  assert reference.returncode == 0, reference.stderr[-3000:]
  killed = tmp_path / "killed"
  for fault in FAULTS:
    result = _run(killed, compile_cache, fault)
    assert result.returncode == -signal.SIGKILL, (fault, result.stderr[-3000:])
    # What a reader (the search resuming a trial) sees: the newest finalized save.
    assert checkpoint.latest_step(killed) == max(
      int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()
    ), fault
  final = _run(killed, compile_cache)
  assert final.returncode == 0, final.stderr[-3000:]
  assert not list(killed.rglob("*.orbax-checkpoint-tmp*")), "temporary directories left"
  want, got = _final_state(tmp_path / "reference"), _final_state(killed)
  assert got[:4] == want[:4]  # metrics rows, best/ step and metrics, latest step
  for a, b in zip(jax.tree.leaves(got[4]), jax.tree.leaves(want[4]), strict=True):
    np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
  sys.path[:0] = [str(HERE.parent), str(HERE)]
  _train(*sys.argv[1:])
