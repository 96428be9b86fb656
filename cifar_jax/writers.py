"""Where training metrics go: metrics.jsonl, TensorBoard, optionally W&B.

`metrics.jsonl` is the source of truth (one JSON object per epoch, read by
`cifar_jax.report`); TensorBoard event files go to the workdir so that
`tensorboard --logdir DIR` works; Weights & Biases is used only when
`config.wandb.project` is set and `wandb` is installed.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cifar_jax import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


def file_safe_name(name: str, default: str) -> str:
  """`name` made usable in a file name: 'train[45000:]' -> 'train_45000'."""
  return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.-]", "_", name)).strip("_.") or default


def read_metrics(workdir: str | Path, warn: bool = True) -> list[dict[str, Any]]:
  """The per-epoch records of a run ([] when it has none yet); lines that are
  not records (a torn last line) are dropped, with a warning if `warn`."""
  path = Path(workdir) / METRICS_FILE
  records, bad_lines, _ = workdir_lib.read_jsonl(path)
  if warn and bad_lines:
    print(f"cifar_jax: warning: {path}: dropped line(s) {', '.join(map(str, bad_lines))}, "
          "not JSON records (a write cut short by a kill or a full disk); the "
          "checkpoint says where the run resumes.", file=sys.stderr)
  return [r for r in records if "epoch" in r and "step" in r]


def truncate_metrics(workdir: str | Path, last_step: int) -> None:
  """Keeps the records up to `last_step` (a resumed run redoes the later
  ones), rewriting the file atomically; a torn last line goes too."""
  path = Path(workdir) / METRICS_FILE
  if path.exists():
    records = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    workdir_lib.write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricWriter:
  """Writes each epoch's record to every configured sink."""

  def __init__(self, workdir: str | Path, config=None):
    self.workdir = Path(workdir)
    self._jsonl = open(self.workdir / METRICS_FILE, "a")
    self._tb = None
    self._wandb = None
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
    except ImportError:
      logging.info("tensorboardX is not installed; no TensorBoard events.")
    project = config.get("wandb", {}).get("project") if config is not None else None
    if project:
      try:
        import wandb
      except ImportError:
        logging.warning("config.wandb.project is set but wandb is not installed; "
                        "`pip install wandb` to log there.")
      else:
        self._wandb = wandb.init(project=project, mode=config.wandb.mode,
                                 dir=str(self.workdir), name=self.workdir.name,
                                 config=config.to_dict(), resume="allow")

  def write_epoch(self, record: dict[str, Any]) -> None:
    workdir_lib.append_line(self._jsonl, json.dumps({k: _json_safe(v)
                                                     for k, v in record.items()}))
    step = int(record["step"])
    scalars = {k: v for k, v in record.items()
               if isinstance(v, (int, float)) and k not in ("step",)}
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=step)

  def write_image(self, tag: str, step: int, image: np.ndarray) -> None:
    """`image`: (H, W, 3) uint8."""
    if self._tb is not None:
      self._tb.add_image(tag, image, step, dataformats="HWC")
      self._tb.flush()
    if self._wandb is not None:
      import wandb
      self._wandb.log({tag: wandb.Image(image)}, step=step)

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
