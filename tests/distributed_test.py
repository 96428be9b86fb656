"""Several processes train, evaluate and checkpoint exactly as one process does.

Two local processes with two CPU devices each (JAX_NUM_CPU_DEVICES=2, gloo
collectives) join a coordinator on 127.0.0.1 through scripts/launch_local.py
and run tests/distributed_worker.py; the reference is the same run in this
process over conftest's four devices: the same global batch on four devices.
Each multi-process launch costs tens of seconds, so the runs that several
tests read (`reference`, `two_processes`) are made once per module.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import distributed_worker as worker
import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAGS
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
  # Not conftest's 4 devices: each process gets JAX_NUM_CPU_DEVICES.
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE_FLAGS}
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


def _launch(spec, timeout=400, cpu_devices=2):
  result = subprocess.run(
    [
      sys.executable,
      LAUNCHER,
      "--num_processes=2",
      f"--cpu_devices_per_process={cpu_devices}",
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
  return jax.device_get(state.params), meta, _records(workdir)


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(got, want, step=6, epochs=(1, 2)):
  (params, meta, records), (want_params, want_meta, want_records) = got, want
  assert meta["step"] == want_meta["step"] == step
  assert [r["epoch"] for r in records] == [r["epoch"] for r in want_records] == list(epochs)
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


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, compile_cache):
  """two_processes(parallel) -> (workdir, spec, the training launch's stderr,
  eval_*.json of --mode=eval in the same layout): the run in 2 processes x 2
  devices, trained and then evaluated, launched at most once per parallel
  mode. Readers must not write into `workdir` (copy it to resume it)."""
  runs = {}

  def get(parallel):
    if parallel not in runs:
      workdir = tmp_path_factory.mktemp(f"two_processes_{parallel}")
      spec = _spec(workdir, parallel, compile_cache)
      trained = _launch(spec)
      _launch(json.dumps({**json.loads(spec), "action": "eval"}))
      evaluated = json.loads((workdir / "eval_train_45000.json").read_text())
      runs[parallel] = (workdir, spec, trained.stderr, evaluated)
    return runs[parallel]

  return get


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_two_processes_train_and_evaluate_like_one(tmp_path, reference, two_processes, parallel):
  workdir, spec, stderr, two = two_processes(parallel)
  # conv_backend=auto: jit over the 4 devices of both processes keeps XLA's
  # convolutions (a custom call has no sharding rule); pmap runs oneDNN's,
  # one program per device, in each process.
  notice = "XLA convolutions" if parallel == "jit" else "oneDNN convolutions"
  assert stderr.count(f"Compute: float32, {notice}") == 2, stderr[-2000:]
  got = _final(workdir, spec)
  _assert_same_run(got, reference[parallel][2])
  # One writer: one record per epoch, one set of checkpoints, no per-process copies.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2

  # Exact evaluation across processes: 37 examples, global batch 16, padded.
  assert two["num_examples"] == worker.EVAL_EXAMPLES
  assert sum(map(sum, two["confusion_matrix"])) == worker.EVAL_EXAMPLES
  # The checkpoint of 2 processes x 2 devices, evaluated in 1 process x 4 devices
  # (in a copy: the workdir stays as the launches left it).
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  one = evaluate.evaluate(worker.run_config(json.loads(spec)), tmp_path, split=worker.splits()[1])
  assert one["num_examples"] == worker.EVAL_EXAMPLES
  assert one["accuracy"] == pytest.approx(two["accuracy"])
  assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)


def _start_two(spec, logs, cpu_devices=2):
  """The two processes of `spec` started directly (not through the launcher,
  which passes a signal on to every process), each with its stdout and
  stderr in logs/process_<i>.log; returns (processes, log paths)."""
  address = f"127.0.0.1:{launch_local.free_port()}"
  procs, paths = [], []
  for i in range(2):
    path = logs / f"process_{i}.log"
    with open(path, "w") as log:  # the child keeps its own descriptor
      procs.append(
        subprocess.Popen(
          [sys.executable, WORKER, spec],
          cwd=REPO_ROOT,
          stdout=log,
          stderr=subprocess.STDOUT,
          env=_env(
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
            JAX_NUM_CPU_DEVICES=str(cpu_devices),
          ),
        )
      )
    paths.append(path)
  return procs, paths


def _wait_for_line(path, text, procs, timeout=300):
  """Waits until `text` appears in the log at `path`; fails when a process
  exits first or after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while text not in path.read_text():
    exited = [p.returncode for p in procs if p.poll() is not None]
    assert not exited, f"exited with {exited} before {text!r}: {path.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"no {text!r} in {timeout} s: {path.read_text()[-3000:]}"
    time.sleep(0.2)


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait(timeout=30)


def test_a_killed_process_stops_the_other_and_both_resume(tmp_path, compile_cache, reference):
  workdir = tmp_path / "run"
  # The pause is the window for the kill, which follows the line at once.
  spec = _spec(workdir, "jit", compile_cache, pause_after_epoch_s=5, heartbeat_timeout_s=10)
  procs, logs = _start_two(spec, tmp_path)
  try:
    _wait_for_line(logs[1], "paused after epoch 1", procs)  # trained and checkpointed
    procs[1].kill()
    start = time.monotonic()
    returncode = procs[0].wait(timeout=180)  # a collective with a dead peer: no hang
    assert returncode != 0
    assert time.monotonic() - start < 180
  finally:
    _kill_all(procs)
  assert checkpoint.latest_step(workdir) == 3
  _launch(_spec(workdir, "jit", compile_cache))  # both again: resumes from step 3
  _assert_same_run(_final(workdir, spec), reference["jit"][2])


def test_sigterm_to_one_process_stops_both_at_one_checkpoint_and_the_rerun_resumes(
  tmp_path, compile_cache, reference
):
  """SIGTERM (what SLURM sends before preempting) to process 1 alone, after
  its 2nd step of 3 in epoch 1: both processes stop at that step, save one
  checkpoint together and exit 75 (stopped, resumable); the same command then resumes mid-epoch to
  the uninterrupted run. One CPU device per process: conv_backend=auto still
  takes XLA's convolutions, the jit program spanning both processes' devices."""
  workdir = tmp_path / "run"
  spec = _spec(workdir, "jit", compile_cache, wait_for_signal={"process": 1, "step": 2})
  procs, logs = _start_two(spec, tmp_path, cpu_devices=1)
  try:
    _wait_for_line(logs[1], "waiting for a signal at step 2", procs)
    procs[1].send_signal(signal.SIGTERM)  # this process only; its peer is not told
    start = time.monotonic()
    codes = [p.wait(timeout=120) for p in procs]
    stopped_s = time.monotonic() - start
  finally:
    _kill_all(procs)
  out = [path.read_text() for path in logs]
  assert codes == [75, 75], "\n---\n".join(text[-3000:] for text in out)
  assert stopped_s < 120
  assert "Terminated (SIGTERM): saving a checkpoint after this step" in out[1]
  assert "Terminated" not in out[0]
  for text in out:
    assert f"Stopped at step 2; checkpoint saved in {workdir}" in text, text[-3000:]
    assert "Compute: float32, XLA convolutions (parallel=jit over 2 devices" in text
  # One checkpoint, at the agreed step, written once for both processes.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert not list(workdir.rglob("*.orbax-checkpoint-tmp*"))
  assert not (workdir / "best").exists() or not any((workdir / "best").iterdir())
  assert not (workdir / "metrics.jsonl").exists() or _records(workdir) == []

  result = _launch(spec, cpu_devices=1)  # the same command: resumes from step 2
  assert "waiting for a signal" not in result.stderr  # a resumed run: no second stop
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3", "6"]
  _assert_same_run(_final(workdir, spec), reference["jit"][2])


def test_checkpoint_of_one_process_resumes_in_two(tmp_path, compile_cache, reference):
  """1 process x 4 devices -> 2 processes x 2 devices, one more epoch."""
  one_workdir, _, _ = reference["jit"]
  shutil.copytree(one_workdir, tmp_path, dirs_exist_ok=True)
  _launch(_spec(tmp_path, "jit", compile_cache, num_epochs=3))
  assert [r["epoch"] for r in _records(tmp_path)] == [1, 2, 3]
  assert checkpoint.latest_step(tmp_path) == 9


def test_checkpoint_of_two_processes_evaluates_and_resumes_in_one_device_and_in_four(
  tmp_path, compile_cache, two_processes
):
  """2 processes x 2 devices -> 1 process x 1 device (--mode=eval, then one
  more epoch) and -> 1 process x 4 devices (one more epoch): the accuracy of
  the 2 x 2 evaluation, and the same epoch 3 in both."""
  two_workdir, _, _, two = two_processes("jit")
  one, four = tmp_path / "one_device", tmp_path / "four_devices"
  for workdir in (one, four):
    shutil.copytree(two_workdir, workdir)
  one_spec = _spec(one, "jit", compile_cache, action=["eval", "train"], num_epochs=3)
  # A process of its own: this one has conftest's four devices.
  result = subprocess.run(
    [sys.executable, WORKER, one_spec],
    env=_env(JAX_NUM_CPU_DEVICES="1"),
    capture_output=True,
    text=True,
    timeout=400,
    cwd=REPO_ROOT,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 device(s) (jit)" in result.stderr, result.stderr[-3000:]
  evaluated = json.loads((one / "eval_train_45000.json").read_text())
  assert evaluated["step"] == two["step"]  # the same checkpoint chosen (best/)
  assert evaluated["num_examples"] == two["num_examples"] == worker.EVAL_EXAMPLES
  assert evaluated["accuracy"] == pytest.approx(two["accuracy"])
  assert evaluated["loss"] == pytest.approx(two["loss"], rel=1e-4)
  assert evaluated["confusion_matrix"] == two["confusion_matrix"]

  four_spec = _spec(four, "jit", compile_cache, num_epochs=3)
  config = worker.run_config(json.loads(four_spec))
  train_split, eval_split = worker.splits()
  train.train_and_evaluate(config, four, train_split=train_split, eval_split=eval_split)
  _assert_same_run(_final(one, one_spec), _final(four, four_spec), step=9, epochs=(1, 2, 3))


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
