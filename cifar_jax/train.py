"""The training loop: epochs of the compiled train step, evaluation, checkpoints.

`train_and_evaluate(config, workdir)` assembles the run with `run.build_run`,
resumes from the workdir's latest checkpoint, and per epoch runs the steps,
evaluates, writes the epoch record (records.py) and checkpoints. The steps
themselves are the pure functions of steps.py; evaluation is evaluator.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any
from typing import Callable

import jax
import ml_collections
import numpy as np

from cifar_jax import checkpoint
from cifar_jax import data_filter
from cifar_jax import distributed
from cifar_jax import input_pipeline
from cifar_jax import metrics as metrics_lib
from cifar_jax import optim
from cifar_jax import profiling
from cifar_jax import progress
from cifar_jax import records
from cifar_jax import run as run_lib
from cifar_jax import workdir as workdir_lib
from cifar_jax import writers


class TrainingStopped(Exception):
  """A stop request (Ctrl-C, or SIGTERM on any process) ended training before
  its last step, with the state checkpointed: the same command resumes.
  `python -m cifar_jax.main` then exits with status `EXIT_CODE` (75,
  EX_TEMPFAIL: "try again"), so that `train && evaluate` scripts and
  schedulers tell a stopped run from a finished one."""

  EXIT_CODE = 75

  def __init__(self, step: int, workdir: Path):
    super().__init__(
      f"Stopped at step {step}; checkpoint saved in {workdir}. "
      "Run the same command again to resume."
    )
    self.step = step


class _StopRequest:
  """The first Ctrl-C (SIGINT) or SIGTERM (what SLURM and most schedulers send
  before they preempt) asks the loop to stop after the current step, with the
  state checkpointed; a second Ctrl-C interrupts at once."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = False
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread: no handler, nothing to restore.
        pass
    return self

  def _handle(self, signum, frame):
    self.requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    name = "Interrupted" if signum == signal.SIGINT else "Terminated (SIGTERM)"
    print(
      f"\n{name}: saving a checkpoint after this step "
      "(press Ctrl-C again to abort without saving).",
      file=sys.stderr,
    )

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    return False


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | Path,
  *,
  train_split: input_pipeline.ArraySplit | None = None,
  eval_split: input_pipeline.ArraySplit | None = None,
  stop_after_steps: int | None = None,
  epoch_callback: Callable[[records.EpochRecord], bool | None] | None = None,
) -> records.EpochRecord:
  """Trains `config` into `workdir`, resuming from its latest checkpoint.

  Writes config.json, metrics.jsonl (one record per epoch), TensorBoard
  events and checkpoints. Returns the last epoch's record. Passing
  `train_split` (and optionally `eval_split`; None then skips evaluation)
  bypasses loading, for tests and the search; `stop_after_steps`
  stops like Ctrl-C after that many total steps (for tests of resuming).
  Raises `TrainingStopped` after a Ctrl-C or SIGTERM (on any process) has
  stopped it early, its checkpoint saved; `stop_after_steps` returns instead.
  Besides the per-epoch saves, a mid-epoch checkpoint is written whenever
  `checkpoint.every_minutes` have passed since the last save, so a process
  killed without warning (SIGKILL, a lost machine) loses at most that much.
  `epoch_callback(record)` is called after each epoch's record is written;
  when it returns True, training stops after that epoch, with its checkpoint
  saved (the search reports to Ray Tune and ends trials at a rung with it).

  One run at a time per workdir (`workdir.RunLock`); config.json is written
  only once the workdir's checkpoint (if any) is known to fit this config.
  """
  layout = run_lib.choose_layout(config)  # before the data: it may refuse the run
  workdir = Path(workdir)
  # One lock per run: across processes the primary holds it for all.
  with workdir_lib.RunLock(workdir) if distributed.is_primary() else contextlib.nullcontext():
    return _train_and_evaluate(
      config, workdir, layout, train_split, eval_split, stop_after_steps, epoch_callback
    )


def _train_and_evaluate(
  config,
  workdir: Path,
  layout: run_lib.Layout,
  train_split,
  eval_split,
  stop_after_steps,
  epoch_callback,
) -> records.EpochRecord:
  if train_split is None:  # else the caller supplies both; no eval_split: no eval
    train_split = input_pipeline.load_split(
      config.dataset.name,
      config.dataset.train_split,
      config.dataset.data_dir,
      key="dataset.train_split",
    )
    if config.dataset.eval_split:
      eval_split = input_pipeline.load_split(
        config.dataset.name,
        config.dataset.eval_split,
        config.dataset.data_dir,
        key="dataset.eval_split",
      )
  # A restored checkpoint overwrites the data init's work; it costs ~1 s.
  run = run_lib.build_run(
    config,
    num_train_examples=len(train_split),
    layout=layout,
    init_images=train_split.images[: run_lib.DATA_INIT_IMAGES],
  )
  par, steps_in_epoch = run.par, run.steps_in_epoch
  total_steps = optim.total_steps(config, steps_in_epoch)
  passes = optim.pass_steps(config, steps_in_epoch)  # the last is short for fractional epochs
  epochs_label = f"{config.num_epochs:g}"
  ckpt = checkpoint.Checkpointer(
    workdir,
    max_to_keep=config.checkpoint.max_to_keep,
    keep_best=config.checkpoint.keep_best,
    meta=run.meta,
    best_metric=records.best_metric(config),
  )
  state = run.state
  restored = ckpt.restore(state, "latest")
  partial_epoch = None
  if restored is not None:
    state, restored_meta = restored
    logging.info("Resuming from step %d in %s", int(state.step), workdir)
    partial_epoch = restored_meta.get("partial_epoch")
  step = int(state.step)
  primary = distributed.is_primary()
  if primary:  # only now is the workdir known to hold nothing this config cannot resume
    workdir_lib.write_atomically(
      workdir / "config.json", config.to_json_best_effort(indent=2) + "\n"
    )
    writers.truncate_metrics(workdir, step)
  base_rng = np.asarray(state.rng)
  state = run.place(state)

  train_data = run.put_split(train_split)
  kept_rows = None
  if data_filter.enabled(config) and step < total_steps:
    proxy_run = run_lib.build_run(
      data_filter.proxy_config(config),
      num_train_examples=len(train_split),
      layout=layout,
      init_images=train_split.images[: run_lib.DATA_INIT_IMAGES],
      updates_every=config.data_filter.proxy_train_every,
    )
    kept_rows = data_filter.selection(
      proxy_run, config, workdir, train_data, len(train_split), base_rng
    )
    del proxy_run
  p_train_step, compile_s = run.compile_train(state, train_data)
  evaluators = []
  if eval_split is not None:
    evaluators.append(("eval", run.evaluator(eval_split, state)))
    if records.averages_weights(config):
      evaluators.append(("ema_eval", run.evaluator(eval_split, state, use_ema=True)))
  compile_s += sum(e.compile_s for _, e in evaluators)
  if config.hard_mining.enabled:  # measures every training example's loss
    train_loss_evaluator = run.evaluator(train_split, state, tta="none", data=train_data)
    compile_s += train_loss_evaluator.compile_s
  print(
    f"{config.model.name}: {run.meta['param_count']:,} parameters, {par.num_devices} "
    f"device(s) ({par.mode}), {run.compute.dtype_name}, {run.compute.conv_backend} "
    f"convolutions, {steps_in_epoch} steps/epoch, compiled in {compile_s:.1f}s",
    file=sys.stderr,
  )

  if step >= total_steps:
    print(
      f"{workdir} already holds a run trained for {epochs_label} epochs; "
      "raise --config.num_epochs to train on, or evaluate it with --mode=eval.",
      file=sys.stderr,
    )
  writer = writers.MetricWriter(workdir, config) if primary else writers.NullWriter()
  profiler = profiling.StepProfiler(
    profiling.parse_steps(config.get("profile_steps")), workdir / "tensorboard", enabled=primary
  )
  record: records.EpochRecord = {}
  stop = _StopRequest()
  signalled = False
  stopped_at = None  # the step of a stop before the run's end
  save_every_s = 60.0 * config.checkpoint.every_minutes  # 0: per-epoch saves only
  last_save = time.monotonic()
  try:
    with stop:
      # A finished fractional run stops part-way through its last pass.
      start_epoch = step // steps_in_epoch if step < total_steps else len(passes)
      for epoch in range(start_epoch, len(passes)):
        weights = None
        if config.hard_mining.enabled and epoch >= config.hard_mining.start_epoch:
          losses = train_loss_evaluator.run(state, per_example=True)[1]["loss"]
          weights = input_pipeline.mining_weights(
            losses, config.hard_mining.power, config.hard_mining.uniform_fraction
          )
        plan, flips = input_pipeline.epoch_batches(
          len(train_split), config.batch_size, config.seed, epoch, config.alternating_flip, weights
        )
        acc = metrics_lib.Accumulator()
        resumed_mid_epoch = step > epoch * steps_in_epoch
        if resumed_mid_epoch and partial_epoch is not None:
          acc.add(metrics_lib.from_host(partial_epoch))  # the steps before the stop
        partial_epoch = None
        start = time.perf_counter()
        first_step = step
        rows_in_pass = passes[epoch]
        save_due = False
        with progress.bar(
          rows_in_pass,
          f"epoch {epoch + 1}/{epochs_label}",
          initial=step - epoch * steps_in_epoch,
        ) as bar:
          for row in range(step - epoch * steps_in_epoch, rows_in_pass):
            batch = run.train_batch(
              train_data,
              plan[row],
              None if flips is None else flips[row],
              None if kept_rows is None else kept_rows[step],
            )
            with profiler.step(step):
              state, step_metrics = p_train_step(state, batch, jax.random.fold_in(base_rng, step))
            acc.add(step_metrics)
            step += 1
            profiler.after_step(step, state)
            bar.update()
            if step % config.log_every_steps == 0:
              sums = acc.fetch()
              metrics_lib.check_finite(sums, epoch + 1)
              seen = (step - first_step) * config.batch_size
              bar.set_postfix(
                loss=f"{metrics_lib.means(sums)['loss']:.3f}",
                img_s=f"{seen / (time.perf_counter() - start):.0f}",
              )
            # Every process stops, and saves, at the same step, whichever was
            # signalled or whichever clock ran out first.
            save_due = bool(save_every_s) and time.monotonic() - last_save >= save_every_s
            signalled, save_due = distributed.agree_each(stop.requested, save_due)
            if signalled or step == stop_after_steps:
              stop.requested = True
              break
            if save_due and row + 1 < rows_in_pass:  # at the pass's end: with its record
              sums = acc.fetch()
              metrics_lib.check_finite(sums, epoch + 1)  # never a NaN state to resume
              ckpt.save(step, par.unreplicate(state), partial_epoch=metrics_lib.to_host(sums))
              last_save = time.monotonic()
              save_due = False
        sums = acc.fetch()
        metrics_lib.check_finite(sums, epoch + 1)
        stopping = stop.requested or step == stop_after_steps
        if stopping and step < epoch * steps_in_epoch + rows_in_pass:
          # The sums so far go with the checkpoint: the resumed epoch's record
          # then covers all of its steps.
          ckpt.save(step, par.unreplicate(state), partial_epoch=metrics_lib.to_host(sums))
          stopped_at = step
          break
        epoch_time = time.perf_counter() - start
        train_means = metrics_lib.means(sums)
        record = {
          "epoch": epoch + 1,
          "step": step,
          "train_loss": train_means["loss"],
          "train_accuracy": train_means["accuracy"],
          "learning_rate": float(run.learning_rate_fn(step - 1)),
          "epoch_time_s": epoch_time,
          "train_img_per_s": (step - first_step) * config.batch_size / epoch_time,
        }
        if epoch == start_epoch:
          record["compile_s"] = compile_s
        last = epoch + 1 == len(passes)
        periodic = config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0
        if evaluators and (periodic or last):
          for prefix, evaluator in evaluators:
            sums = evaluator.run(state, desc=f"{prefix} after epoch {epoch + 1}")[0]
            eval_means = metrics_lib.means(sums)
            record[f"{prefix}_loss"] = eval_means["loss"]
            record[f"{prefix}_accuracy"] = eval_means["accuracy"]
        writer.write_epoch(record)
        if primary:
          print(records.summary_line(record), file=sys.stderr)
        saved = (epoch + 1) % config.checkpoint.every_epochs == 0 or last or stopping or save_due
        if saved:
          ckpt.save(step, par.unreplicate(state), record)
          last_save = time.monotonic()
        if epoch_callback is not None and epoch_callback(dict(record)):
          if not saved:  # where a resume (e.g. to a later rung) starts
            ckpt.save(step, par.unreplicate(state), record)
          break
        if stopping and not last:
          stopped_at = step
          break
  finally:
    profiler.close()
    writer.close()
    ckpt.wait()
    ckpt.close()
  if stopped_at is not None:
    stopped = TrainingStopped(stopped_at, workdir)
    print(stopped, file=sys.stderr)
    if signalled:
      raise stopped
  return record
