"""What a training run owns in its workdir: one run at a time, and files
written so that a kill at any moment leaves the workdir resumable.

- `RunLock`: an `fcntl` lock on `DIR/.lock`, held for the life of a training
  run and released by the OS when the process dies, however it dies. A second
  run on the same workdir stops at once, naming the PID that holds it;
  `--mode=eval` and `cifar_jax.report` only read, and take no lock.
- `write_atomically`: a whole file replaced in one rename (config.json,
  a rewritten metrics.jsonl), never half written.
- `append_line`: one record appended, flushed and fsynced; a kill can at
  worst tear the last line, which `read_jsonl` (the one reader of the
  JSON-lines files: metrics.jsonl, the search's trials.jsonl) drops and
  reports.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO
from typing import Any
from typing import Callable
from typing import NamedTuple

LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live process is training into the same workdir."""


class RunLock:
  """Holds `workdir`'s run lock while in the `with` block."""

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  def __enter__(self) -> "RunLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise WorkdirBusyError(
        f"{self.path.parent} is in use by another training run (PID {holder}). "
        "Wait for it to finish or stop it, or train into another --workdir "
        "(--mode=eval and cifar_jax.report can read it meanwhile)."
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> bool:
    if self._fd is not None:
      os.close(self._fd)  # releases the lock; the file stays, harmlessly
      self._fd = None
    return False


def write_atomically(path: str | Path, text: str | bytes) -> None:
  """Replaces `path` with `text` (or bytes) in one rename, after the data is on disk."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(path.parent)


def append_line(f: IO[str], line: str) -> None:
  """Appends one whole line to the open file `f` and forces it to disk."""
  f.write(line.rstrip("\n") + "\n")
  f.flush()
  os.fsync(f.fileno())


class JsonLines(NamedTuple):
  rows: list[dict[str, Any]]  # the lines that are JSON objects
  bad_lines: list[int]  # the numbers of the other non-empty lines, skipped
  num_lines: int


def read_jsonl(
  path: str | Path, accept: Callable[[dict[str, Any]], bool] = lambda row: True
) -> JsonLines:
  """The JSON objects of a JSON-lines file (none if it does not exist) that
  `accept` keeps, and the numbers of the lines that are not one: typically a
  last line (number `num_lines`) torn by a kill or a full disk."""
  path = Path(path)
  if not path.exists():
    return JsonLines([], [], 0)
  rows, bad_lines = [], []
  lines = path.read_text().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if isinstance(row, dict) and accept(row):
      rows.append(row)
    else:
      bad_lines.append(number)
  return JsonLines(rows, bad_lines, len(lines))


def _fsync_dir(path: Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
