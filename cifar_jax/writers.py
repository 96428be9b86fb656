"""Where training metrics go: metrics.jsonl, TensorBoard, optionally W&B.

`metrics.jsonl` is the source of truth (one `records.EpochRecord` per epoch,
read by `cifar_jax.report`). TensorBoard event files (tensorboard's own
writer, without TensorFlow) go to DIR/tensorboard, so that
`tensorboard --logdir DIR` works, with the config's hyperparameters as
TensorBoard hparams. Weights & Biases is used only when
`config.wandb.project` is set and `wandb` is installed, under the run id kept
in DIR/wandb_run_id, so that a resumed run continues the same W&B run.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
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


class TensorBoardWriter:
  """Event files for TensorBoard, written with tensorboard's own TensorFlow-free
  event writer and summary protos: scalars and images in the form
  `tf.summary.scalar` / `tf.summary.image` write them, and the hparams
  plugin's session summary. Not importing TensorFlow saves every training
  process ~5-10 s of start-up when its data is already in memory."""

  def __init__(self, logdir: Path):
    # tensorboard's EventFileWriter would import TensorFlow (for its gfile)
    # when it is installed; its record writer does not.
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
    self._records = RecordWriter(open(logdir / name, "wb"))
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def _write(self, summary, step: int) -> None:
    from tensorboard.compat.proto import event_pb2

    self._add(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def scalars(self, values: dict[str, float], step: int) -> None:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import summary as scalar_summary

    summary = summary_pb2.Summary()
    for tag, value in values.items():
      summary.value.extend(scalar_summary.scalar_pb(tag, float(value)).value)
    self._write(summary, step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """`image`: (H, W, 3) uint8, stored PNG-encoded as [width, height, png]."""
    from PIL import Image
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.util import tensor_util

    png = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(png, format="PNG")
    height, width = image.shape[:2]
    tensor = tensor_util.make_tensor_proto(
      np.array([str(width).encode(), str(height).encode(), png.getvalue()], dtype=object)
    )
    summary = summary_pb2.Summary()
    summary.value.add(
      tag=tag,
      metadata=image_metadata.create_summary_metadata(display_name=tag, description=""),
      tensor=tensor,
    )
    self._write(summary, step)

  def hparams(self, values: dict[str, bool | int | float | str], trial_id: str) -> None:
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary

    self._write(hparams_summary.hparams_pb(values, trial_id=trial_id), 0)

  def close(self) -> None:
    self._records.close()


def hparams(config) -> dict[str, bool | int | float | str]:
  """The config flattened to dotted keys with the value types TensorBoard's
  hparams take: sequences as their text, unset (None) entries left out."""
  flat = {}

  def visit(prefix: str, value) -> None:
    if isinstance(value, dict):
      for key, item in value.items():
        visit(f"{prefix}{key}.", item)
    elif value is not None:
      key = prefix[:-1]
      flat[key] = value if isinstance(value, (bool, int, float, str)) else str(value)

  visit("", config.to_dict())
  return flat


WANDB_RUN_ID_FILE = "wandb_run_id"


def wandb_run_id(workdir: Path) -> str:
  """The W&B run id of this workdir's run: the stored one, else a new one
  (12 hex digits, which W&B accepts as an id), stored before W&B sees it so
  that a kill at any moment resumes the same run."""
  path = Path(workdir) / WANDB_RUN_ID_FILE
  if path.exists() and path.read_text().strip():
    return path.read_text().strip()
  run_id = uuid.uuid4().hex[:12]
  workdir_lib.write_atomically(path, run_id + "\n")
  return run_id


class MetricWriter:
  """Writes each epoch's record to every configured sink."""

  def __init__(self, workdir: str | Path, config=None):
    self.workdir = Path(workdir)
    self._jsonl = open(records.metrics_path(self.workdir), "a")
    self._tb = TensorBoardWriter(self.workdir / "tensorboard")
    if config is not None:
      self._write_hparams(config)
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
          id=wandb_run_id(self.workdir),
          resume="allow",  # the same id: a restarted run continues its W&B run
        )

  def _write_hparams(self, config) -> None:
    """The config as TensorBoard hparams of this run: the HParams tab of
    `tensorboard --logdir runs/` then tables every run's settings beside its
    last eval_accuracy (and the other scalars)."""
    self._tb.hparams(hparams(config), trial_id=self.workdir.name)

  def write_epoch(self, record: records.EpochRecord) -> None:
    workdir_lib.append_line(self._jsonl, json.dumps({k: _json_safe(v) for k, v in record.items()}))
    step = int(record["step"])
    scalars = {
      k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step",)
    }
    self._tb.scalars(scalars, step)
    if self._wandb is not None:
      self._wandb.log(scalars, step=step)

  def write_image(self, tag: str, step: int, image: np.ndarray) -> None:
    """`image`: (H, W, 3) uint8."""
    self._tb.image(tag, image, step)
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
