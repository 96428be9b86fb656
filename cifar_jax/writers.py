"""Where training metrics go: metrics.jsonl, TensorBoard, optionally W&B.

`metrics.jsonl` is the source of truth (one `records.EpochRecord` per epoch,
read by `cifar_jax.report`); TensorBoard event files (TensorFlow's writer) go
to DIR/tensorboard so that `tensorboard --logdir DIR` works; Weights & Biases is used only when
`config.wandb.project` is set and `wandb` is installed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np

from cifar_jax import records
from cifar_jax import workdir as workdir_lib


def file_safe_name(name: str, default: str) -> str:
  """`name` made usable in a file name: 'train[45000:]' -> 'train_45000'."""
  return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.-]", "_", name)).strip("_.") or default


def read_metrics(workdir: str | Path) -> list[records.EpochRecord]:
  """The epoch records of a run ([] when it has none yet); lines that are not
  records (a torn last line) are dropped with a warning."""
  contents = records.read(workdir)
  if contents.bad_lines:
    print(
      f"cifar_jax: warning: {records.metrics_path(workdir)}: dropped line(s) "
      f"{', '.join(map(str, contents.bad_lines))}, not epoch records (a write cut "
      "short by a kill or a full disk); the checkpoint says where the run resumes.",
      file=sys.stderr,
    )
  return contents.records


def truncate_metrics(workdir: str | Path, last_step: int) -> None:
  """Keeps the records up to `last_step` (a resumed run redoes the later
  ones), rewriting the file atomically; a torn last line goes too, with the
  warning."""
  path = records.metrics_path(workdir)
  if path.exists():
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    workdir_lib.write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _tensorboard_writer(logdir: Path):
  """TensorFlow's event writer (TensorFlow is a dependency already, for the
  data), on the CPU: it must not take GPU memory from JAX."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow started already (loading the data): it did this then
    pass
  return tf.summary.create_file_writer(str(logdir))


class MetricWriter:
  """Writes each epoch's record to every configured sink."""

  def __init__(self, workdir: str | Path, config=None):
    self.workdir = Path(workdir)
    self._jsonl = open(records.metrics_path(self.workdir), "a")
    self._tb = _tensorboard_writer(self.workdir / "tensorboard")
    self._wandb = None
    project = config.get("wandb", {}).get("project") if config is not None else None
    if project:
      try:
        import wandb
      except ImportError:
        logging.warning(
          "config.wandb.project is set but wandb is not installed; "
          "`pip install wandb` to log there."
        )
      else:
        self._wandb = wandb.init(
          project=project,
          mode=config.wandb.mode,
          dir=str(self.workdir),
          name=self.workdir.name,
          config=config.to_dict(),
          resume="allow",
        )

  def write_epoch(self, record: records.EpochRecord) -> None:
    workdir_lib.append_line(self._jsonl, json.dumps({k: _json_safe(v) for k, v in record.items()}))
    step = int(record["step"])
    scalars = {
      k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step",)
    }
    import tensorflow as tf

    with self._tb.as_default(step=step):
      for key, value in scalars.items():
        tf.summary.scalar(key, value)
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=step)

  def write_image(self, tag: str, step: int, image: np.ndarray) -> None:
    """`image`: (H, W, 3) uint8."""
    import tensorflow as tf

    with self._tb.as_default(step=step):
      tf.summary.image(tag, image[None])
    self._tb.flush()
    if self._wandb is not None:
      import wandb

      self._wandb.log({tag: wandb.Image(image)}, step=step)

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


class NullWriter:
  """A MetricWriter that writes nothing: what processes other than the
  primary of a multi-process run use."""

  def write_epoch(self, record: records.EpochRecord) -> None:
    pass

  def write_image(self, tag: str, step: int, image: np.ndarray) -> None:
    pass

  def close(self) -> None:
    pass
