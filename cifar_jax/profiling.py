"""A `jax.profiler` trace of chosen training steps, for TensorBoard's profile tab.

`--config.profile_steps=START,END` traces steps START through END (counted as
metrics.jsonl counts them: the first step of a run is step 1) into
DIR/tensorboard/plugins/profile/, where `tensorboard --logdir DIR` (with
`pip install tensorboard-plugin-profile`) shows it. Each step is annotated
with `jax.profiler.StepTraceAnnotation`, so the profile's step view lines up
with the run's steps. Only the primary process of a multi-process run traces:
processes of one machine would otherwise write the same host's file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax


def parse_steps(text: str | None) -> tuple[int, int] | None:
  """'10,20' -> (10, 20); None or '' -> None. ValueError names the key."""
  if not text:
    return None
  try:
    start, end = (int(part) for part in str(text).split(","))
  except ValueError:
    start = end = 0
  if not 1 <= start <= end:
    raise ValueError(
      f"config.profile_steps must be START,END with 1 <= START <= END (steps as in "
      f"metrics.jsonl, the first is 1), e.g. 10,20, not {text!r}."
    )
  return start, end


class StepProfiler:
  """Starts the trace before step `start` and stops it once step `end` has
  finished; `close` stops a trace a stopped run left open."""

  def __init__(self, steps: tuple[int, int] | None, logdir: str | Path, enabled: bool = True):
    self.steps = steps if enabled else None
    self.logdir = Path(logdir)
    self.tracing = False
    self.traced: list[int] = []

  def step(self, step: int) -> contextlib.AbstractContextManager:
    """Wraps the call that takes the run from `step` to `step + 1`."""
    if self.steps is None:
      return contextlib.nullcontext()
    start, end = self.steps
    number = step + 1
    if not self.tracing and start <= number <= end:
      self.logdir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.logdir))
      self.tracing = True
    if not self.tracing:
      return contextlib.nullcontext()
    self.traced.append(number)
    return jax.profiler.StepTraceAnnotation("train", step_num=number)

  def after_step(self, step: int, state: Any) -> None:
    """`step`: the count after the step; ends the trace after step `end`."""
    if self.tracing and step >= self.steps[1]:
      jax.block_until_ready(state)  # the traced steps' device work, not just their dispatch
      self.close()

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
