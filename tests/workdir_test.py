"""The workdir's run lock, atomic writes and the tolerant JSON-lines reader
(cifar_jax/workdir.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cifar_jax import workdir


def test_second_lock_fails_naming_the_holder(tmp_path):
  with workdir.RunLock(tmp_path):
    with pytest.raises(
      workdir.WorkdirBusyError, match=rf"another training run \(PID {os.getpid()}\)"
    ):
      with workdir.RunLock(tmp_path):
        pass
  with workdir.RunLock(tmp_path):  # released on exit
    pass


def test_lock_of_a_killed_process_is_free_at_once(tmp_path):
  code = (
    "import sys, time; from cifar_jax import workdir; "
    f"lock = workdir.RunLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); "
    "time.sleep(60)"
  )
  holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir.WorkdirBusyError, match=f"PID {holder.pid}"):
      workdir.RunLock(tmp_path).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    holder.kill()
  deadline = time.monotonic() + 10
  with workdir.RunLock(tmp_path):
    assert time.monotonic() < deadline


def test_write_atomically_replaces_the_whole_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("old")
  workdir.write_atomically(path, "new\n")
  assert path.read_text() == "new\n"
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary left


def test_read_jsonl_skips_torn_and_malformed_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 1}\nnot json\n\n[1, 2]\n{"epoch": 2}\n{"epoch": 3, "st')
  rows, bad, num_lines = workdir.read_jsonl(path)
  assert rows == [{"epoch": 1}, {"epoch": 2}]
  assert bad == [2, 4, 6] and num_lines == 6
  assert workdir.read_jsonl(tmp_path / "missing.jsonl") == ([], [], 0)


def test_append_line_writes_one_whole_line(tmp_path):
  path = tmp_path / "rows.jsonl"
  with open(path, "a") as f:
    workdir.append_line(f, json.dumps({"a": 1}))
    workdir.append_line(f, json.dumps({"a": 2}) + "\n")
  assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
