"""Exact evaluation of a whole split: every example counted once.

The split goes to the devices once; batches are gathered there from an index
plan whose last batch is padded and masked (`input_pipeline.eval_index_plan`),
so no example is dropped and none counts twice, on any number of devices.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import numpy as np

from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib
from cifar_jax import parallel as parallel_lib
from cifar_jax import progress


class Evaluator:
  """Runs a compiled `steps.eval_step` (options bound) over `split`.

  `data` reuses a split already on the devices (the train split, for
  hard-example mining) instead of copying it again. Built by
  `run.Run.evaluator`, which binds the step's options from the config.
  """

  def __init__(
    self,
    par: parallel_lib.DataParallel,
    eval_step: Callable,
    split: input_pipeline.ArraySplit,
    state: Any,
    batch_size: int,
    data: dict[str, jax.Array] | None = None,
  ):
    par.check_batch_size(batch_size, "eval_batch_size")
    self.par = par
    self.split = split
    # A split smaller than the batch needs only one (padded) device-multiple batch.
    self.batch_size = min(batch_size, -(-len(split) // par.num_devices) * par.num_devices)
    self.indices, self.mask = input_pipeline.eval_index_plan(len(split), self.batch_size)
    self.data = (
      data if data is not None else par.put_dataset({"image": split.images, "label": split.labels})
    )
    self._gather = par.make_gather()
    self._step, self.compile_s = par.compile_eval(eval_step, state, self._batch(0))

  def _batch(self, i: int) -> dict[str, jax.Array]:
    batch = self._gather(self.data, self.indices[i])
    batch["mask"] = self.par.put_batch({"mask": self.mask[i]})["mask"]
    return batch

  def run(
    self, state: Any, per_example: bool = False, desc: str | None = None
  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Returns the summed metrics and, if asked, every example's prediction
    and loss (in split order, padding removed). With `desc`, a progress bar
    counts the examples on a terminal (a TTA pass on a CPU takes a while)."""
    acc = metrics_lib.Accumulator()
    outputs = []
    with progress.bar(len(self.split), desc or "", unit="img", show=desc is not None) as bar:
      for i in range(len(self.indices)):
        step_metrics, batch_outputs = self._step(state, self._batch(i))
        acc.add(step_metrics)
        if per_example:
          outputs.append(batch_outputs)
        if not bar.disable:  # else the bar runs ahead of the asynchronous steps
          jax.block_until_ready(step_metrics)
        bar.update(int(self.mask[i].sum()))
    sums = acc.fetch()
    if not per_example:
      return sums, None
    keep = self.mask.reshape(-1) > 0
    return sums, {k: np.concatenate([np.asarray(o[k]) for o in outputs])[keep] for k in outputs[0]}
