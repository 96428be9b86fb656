"""The epoch record: what one line of a run's metrics.jsonl holds, and reading it.

`EpochRecord` is the one schema the train loop writes and the writers, the
report, the search and the checkpoint meta read. metrics.jsonl is read only
through `read`, which keeps every line that is a record and reports the
others (typically a last line torn by a kill) for the caller to warn about.
jax-free, so that the report starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple
from typing import TypedDict

from cifar_jax import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


class EpochRecord(TypedDict, total=False):
  """One finished epoch. `epoch` (1-based) and `step` (total steps so far)
  are always there; the eval keys only in epochs that evaluated, `compile_s`
  only in the first epoch of a process."""

  epoch: int
  step: int
  train_loss: float
  train_accuracy: float
  learning_rate: float
  epoch_time_s: float
  train_img_per_s: float
  compile_s: float
  eval_loss: float
  eval_accuracy: float
  ema_eval_loss: float  # with averaged weights (EMA or lookahead): their evaluation
  ema_eval_accuracy: float


REQUIRED_KEYS = ("epoch", "step")
# What the loop's one-line summary of an epoch shows, in order.
SUMMARY_KEYS = (
  "train_loss",
  "train_accuracy",
  "eval_loss",
  "eval_accuracy",
  "ema_eval_accuracy",
  "learning_rate",
  "train_img_per_s",
)


class MetricsFile(NamedTuple):
  records: list[EpochRecord]
  bad_lines: list[int]  # line numbers that are not records, skipped
  num_lines: int

  @property
  def torn_last_line(self) -> bool:
    """Only the last line is bad: a write cut short, or one in progress."""
    return self.bad_lines == [self.num_lines]


def metrics_path(workdir: str | Path) -> Path:
  return Path(workdir) / METRICS_FILE


def is_record(row: dict) -> bool:
  return all(isinstance(row.get(k), int) for k in REQUIRED_KEYS)


def read(workdir: str | Path) -> MetricsFile:
  """The records of `workdir`'s metrics.jsonl (none when it has none yet)."""
  return MetricsFile(*workdir_lib.read_jsonl(metrics_path(workdir), accept=is_record))


def averages_weights(config) -> bool:
  """Whether the run keeps averaged weights (`state.ema`, evaluated as
  `ema_eval_*`, and the weights --mode=eval, predict and export use): an EMA
  (`ema_decay`) or a lookahead's slow weights (`lookahead.every_steps`).
  `config`: the ConfigDict or a workdir's config.json."""
  config = config or {}
  return bool(config.get("ema_decay") or (config.get("lookahead") or {}).get("every_steps"))


def best_metric(config) -> str:
  """The record key a run's checkpoints are ranked by (best/, `--mode=eval`,
  predict, export) and the report shows: the averaged weights' eval accuracy
  for a run that keeps them (those are the weights evaluated and served),
  else `eval_accuracy`."""
  return "ema_eval_accuracy" if averages_weights(config) else "eval_accuracy"


def summary_line(record: EpochRecord) -> str:
  parts = [f"epoch {record['epoch']}", f"step {record['step']}"]
  parts += [f"{key} {record[key]:.4g}" for key in SUMMARY_KEYS if record.get(key) is not None]
  return " | ".join(parts)
