"""Several processes train, evaluate and checkpoint exactly as one process does.

Two local processes with two CPU devices each (JAX_NUM_CPU_DEVICES=2, gloo
collectives) join a coordinator on 127.0.0.1 through scripts/launch_local.py
and run tests/distributed_worker.py; the reference is the same run in this
process over conftest's four devices: the same global batch on four devices.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import distributed_worker as worker
import jax
import numpy as np
import pytest
from conftest import REPO_ROOT

from cifar_jax import checkpoint
from cifar_jax import evaluate
from cifar_jax import run as run_lib
from cifar_jax import train

sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import launch_local  # noqa: E402

WORKER = os.path.join(REPO_ROOT, "tests", "distributed_worker.py")
LAUNCHER = os.path.join(REPO_ROOT, "scripts", "launch_local.py")
pytestmark = pytest.mark.slow


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest's 4 devices
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **extra)
  return env


def _spec(workdir, parallel, compile_cache, **extra):
  return json.dumps(
    {
      "workdir": str(workdir),
      "parallel": parallel,
      "action": "train",
      "compile_cache": compile_cache,
      **extra,
    }
  )


def _launch(spec, timeout=400):
  result = subprocess.run(
    [
      sys.executable,
      LAUNCHER,
      "--num_processes=2",
      "--cpu_devices_per_process=2",
      "--grace_s=20",
      "--",
      sys.executable,
      WORKER,
      spec,
    ],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO_ROOT,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _final(workdir, spec):
  config = worker.run_config(json.loads(spec))
  template = run_lib.build_run(config).state
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  state, meta = ckpt.restore(template, "latest")
  ckpt.close()
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return jax.device_get(state.params), meta, records


def _assert_same_run(got, want):
  (params, meta, records), (want_params, want_meta, want_records) = got, want
  assert meta["step"] == want_meta["step"] == 6
  assert [r["epoch"] for r in records] == [r["epoch"] for r in want_records] == [1, 2]
  for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
    np.testing.assert_allclose(
      [r[key] for r in records], [r[key] for r in want_records], rtol=2e-4, atol=1e-6, err_msg=key
    )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5), params, want_params
  )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):
  """The run in one process over four devices, per parallel mode."""
  runs = {}
  for parallel in ("jit", "pmap"):
    workdir = tmp_path_factory.mktemp(f"one_process_{parallel}")
    spec = _spec(workdir, parallel, compile_cache)
    config = worker.run_config(json.loads(spec))
    train_split, eval_split = worker.splits()
    train.train_and_evaluate(config, workdir, train_split=train_split, eval_split=eval_split)
    runs[parallel] = (workdir, spec, _final(workdir, spec))
  return runs


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_two_processes_train_and_evaluate_like_one(tmp_path, compile_cache, reference, parallel):
  spec = _spec(tmp_path, parallel, compile_cache)
  result = _launch(spec)
  # conv_backend=auto: jit over the 4 devices of both processes keeps XLA's
  # convolutions (a custom call has no sharding rule); pmap runs oneDNN's,
  # one program per device, in each process.
  notice = "XLA convolutions" if parallel == "jit" else "oneDNN convolutions"
  assert result.stderr.count(f"Compute: float32, {notice}") == 2, result.stderr[-2000:]
  got = _final(tmp_path, spec)
  _assert_same_run(got, reference[parallel][2])
  # One writer: one record per epoch, one set of checkpoints, no per-process copies.
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2

  # Exact evaluation across processes: 37 examples, global batch 16, padded.
  eval_spec = json.dumps({**json.loads(spec), "action": "eval"})
  _launch(eval_spec)
  two = json.loads((tmp_path / "eval_train_45000.json").read_text())
  assert two["num_examples"] == worker.EVAL_EXAMPLES
  assert sum(map(sum, two["confusion_matrix"])) == worker.EVAL_EXAMPLES
  # The checkpoint of 2 processes x 2 devices, evaluated in 1 process x 4 devices.
  one = evaluate.evaluate(worker.run_config(json.loads(spec)), tmp_path, split=worker.splits()[1])
  assert one["num_examples"] == worker.EVAL_EXAMPLES
  assert one["accuracy"] == pytest.approx(two["accuracy"])
  assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)


def test_a_killed_process_stops_the_other_and_both_resume(tmp_path, compile_cache, reference):
  spec = _spec(tmp_path, "jit", compile_cache, pause_after_epoch_s=20, heartbeat_timeout_s=10)
  address = f"127.0.0.1:{launch_local.free_port()}"
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, spec],
      cwd=REPO_ROOT,
      stderr=subprocess.PIPE,
      text=True,
      env=_env(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(i),
        JAX_NUM_CPU_DEVICES="2",
      ),
    )
    for i in range(2)
  ]
  try:
    seen = []
    for line in procs[1].stderr:  # until epoch 1 is trained and checkpointed
      seen.append(line)
      if "paused after epoch 1" in line:
        break
    assert "paused after epoch 1" in seen[-1], "".join(seen[-30:])
    procs[1].kill()
    start = time.monotonic()
    returncode = procs[0].wait(timeout=180)  # a collective with a dead peer: no hang
    assert returncode != 0
    assert time.monotonic() - start < 180
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert checkpoint.latest_step(tmp_path) == 3
  _launch(_spec(tmp_path, "jit", compile_cache))  # both again: resumes from step 3
  _assert_same_run(_final(tmp_path, spec), reference["jit"][2])


def test_checkpoint_of_one_process_resumes_in_two(tmp_path, compile_cache, reference):
  """1 process x 4 devices -> 2 processes x 2 devices, one more epoch."""
  one_workdir, _, _ = reference["jit"]
  shutil.copytree(one_workdir, tmp_path, dirs_exist_ok=True)
  _launch(_spec(tmp_path, "jit", compile_cache, num_epochs=3))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert checkpoint.latest_step(tmp_path) == 9


def _main(*flags, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "cifar_jax.main", "--config=configs/lenet5.py", *flags],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO_ROOT,
  )


def test_bad_distributed_settings_stop_with_one_line(tmp_path):
  result = _main(
    f"--workdir={tmp_path}",
    "--config.distributed.coordinator_address=127.0.0.1:1",
    "--config.distributed.num_processes=2",
    "--config.distributed.process_id=2",
  )
  assert result.returncode != 0
  assert "process_id must be in [0, 2)" in result.stderr
  assert "Traceback" not in result.stderr


def test_an_unreachable_coordinator_is_one_line_after_the_timeout(tmp_path):
  port = launch_local.free_port()  # nobody listens there
  start = time.monotonic()
  result = _main(
    f"--workdir={tmp_path}",
    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
    "--config.distributed.num_processes=2",
    "--config.distributed.process_id=1",
    "--config.distributed.initialization_timeout_s=3",
  )
  assert result.returncode != 0
  assert f"no coordinator answered at 127.0.0.1:{port} within 3 s" in result.stderr
  assert "Traceback" not in result.stderr
  assert time.monotonic() - start < 100
