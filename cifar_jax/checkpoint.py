"""Orbax checkpoints of the train state: latest N, the best by eval accuracy.

`DIR/checkpoints/` keeps the last `checkpoint.max_to_keep` saves and is what a
restarted run resumes from; `DIR/best/` keeps the one save with the highest
eval accuracy (`best_metric`: the EMA weights' one, `ema_eval_accuracy`, for a
run that keeps an EMA, since those are the weights evaluated and served).
Every save also stores a small JSON `meta` item (model name, options,
parameter count, a signature of the state's tree, step, metrics) that is read
first on restore, so a checkpoint of a different model or optimizer fails
with a clear message instead of an opaque shape error or, worse, a silent
re-initialisation.

What survives what:
- an unreadable checkpoint (truncated or garbled files: a full disk, a kill
  in the wrong place, a bad copy) is told apart from an incompatible one by
  the signature, moved aside to `DIR/corrupt/` (never deleted; read-only
  users such as `--mode=eval` only skip it) and the previous one is used;
- a kill between the latest save and the best save: a training run
  reconciles `best/` with the metrics of the checkpoints present when it
  starts, and `--mode=eval` picks the checkpoint with the best eval accuracy
  of both folders;
- orbax's temporary directories of an interrupted save are removed when a
  training run starts (`cleanup_tmp_directories`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from typing import Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from cifar_jax import distributed

CORRUPT_DIR = "corrupt"


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a different model, shape or optimizer."""


class NoCheckpointError(FileNotFoundError):
  """The workdir holds no checkpoint to evaluate."""


class UnreadableCheckpointError(RuntimeError):
  """A checkpoint's files cannot be read back (truncated, garbled)."""


def state_signature(state: Any) -> str:
  """A short hash of the state's tree paths and shapes: equal for a
  checkpoint and the state a compatible config builds. (Not dtypes: a fresh
  state's step is a Python int, a trained one's an int32 array.)"""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  text = ";".join(f"{jax.tree_util.keystr(path)}:{tuple(np.shape(x))}" for path, x in leaves)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _warn(message: str) -> None:
  print(f"cifar_jax: warning: {message}", file=sys.stderr)


class Checkpointer:
  """Saves and restores one run's train state under `workdir`."""

  def __init__(
    self,
    workdir: str | Path,
    *,
    max_to_keep: int = 2,
    keep_best: bool = True,
    meta: dict[str, Any] | None = None,
    read_only: bool = False,
    best_metric: str = "eval_accuracy",
  ):
    self.workdir = Path(workdir).absolute()
    self.best_metric = best_metric
    self.meta = dict(meta or {})
    self.read_only = read_only
    self._skipped: set[tuple[str, int]] = set()  # unreadable, read-only: not moved

    def manager(sub: str, keep: int) -> ocp.CheckpointManager:
      if read_only:
        options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0, enable_async_checkpointing=False
        )
        with _orbax_quiet():  # it warns that a read-only directory is read-only
          return ocp.CheckpointManager(self.workdir / sub, options=options)
      else:
        options = ocp.CheckpointManagerOptions(
          max_to_keep=keep,
          save_interval_steps=1,
          create=True,
          cleanup_tmp_directories=True,  # left by a save that was killed
          enable_async_checkpointing=False,
        )  # steps donate the state's buffers
      return ocp.CheckpointManager(self.workdir / sub, options=options)

    self._latest = manager("checkpoints", max(max_to_keep, 1))
    self._best = manager("best", 1) if keep_best else None
    self.best_accuracy = self._best_saved_accuracy()
    if self._best is not None and not read_only:
      # Across processes the primary repairs and the others then re-read, so
      # that every process takes the same save decisions (saves are collective).
      if distributed.is_primary():
        self._reconcile_best()
      distributed.barrier("cifar_jax.checkpoint.reconcile_best")
      if not distributed.is_primary():
        self._best.reload()
        self.best_accuracy = self._best_saved_accuracy()

  def _best_saved_accuracy(self) -> float:
    if self._best is not None:
      for step in reversed(self._best.all_steps()):
        try:
          return self._score(self._read_meta(self._best, step), -1.0)
        except UnreadableCheckpointError as e:
          self._set_aside(self._best, step, e)
    return -1.0

  def _score(self, meta: dict | None, default):
    return score(meta, self.best_metric, default)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def saved_steps(self) -> list[int]:
    """The steps of every checkpoint in checkpoints/ and best/, ascending."""
    managers = [self._latest] + ([self._best] if self._best is not None else [])
    return sorted({s for m in managers for s in m.all_steps()})

  def save(
    self,
    step: int,
    state: Any,
    metrics: dict[str, Any] | None = None,
    partial_epoch: dict[str, float] | None = None,
  ) -> None:
    """Saves `state` at `step` (once per step); also to best/ when
    `metrics[self.best_metric]` beats every earlier save. `partial_epoch`
    holds the metric sums of an epoch stopped midway, for its resumption."""
    meta = {
      **self.meta,
      "step": int(step),
      "metrics": metrics,
      "state_signature": state_signature(state),
    }
    if partial_epoch is not None:
      meta["partial_epoch"] = partial_epoch
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if step not in self._latest.all_steps():
      self._latest.save(step, args=args)
    accuracy = (metrics or {}).get(self.best_metric)
    if self._best is not None and accuracy is not None and accuracy > self.best_accuracy:
      if step not in self._best.all_steps():
        self._best.save(step, args=args)
      self.best_accuracy = accuracy

  def restore(self, template: Any, which: str | int = "latest") -> tuple[Any, dict] | None:
    """Restores into the structure, shapes and shardings of `template`.

    `which` is "latest", "best" or "best_or_latest" (the saved checkpoint
    with the highest `best_metric`, else the latest), or a step number (the
    checkpoint of that step, from checkpoints/ or best/). An unreadable
    checkpoint is set aside with a warning and the next candidate tried.
    Returns (state, meta), or None when there is no readable checkpoint.
    """
    for manager, step in self._candidates(which):
      try:
        return self._restore_step(manager, step, template)
      except UnreadableCheckpointError as e:
        self._set_aside(manager, step, e)
    return None

  def wait(self) -> None:
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    if self._best is not None:
      self._best.close()

  # ---- internals -------------------------------------------------------------
  def _candidates(self, which: str | int) -> list[tuple[ocp.CheckpointManager, int]]:
    def steps(manager):
      return [
        (manager, s)
        for s in reversed(manager.all_steps())
        if (str(manager.directory), s) not in self._skipped
      ]

    if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
      # The same save may sit in both folders; if one copy is unreadable the other serves.
      managers = [self._latest] + ([self._best] if self._best is not None else [])
      return [c for m in managers for c in steps(m) if c[1] == which]
    if which not in ("latest", "best", "best_or_latest"):
      raise ValueError(f"which must be latest, best, best_or_latest or a step, not {which!r}")

    latest = steps(self._latest)
    if which == "latest":
      return latest
    best = steps(self._best) if self._best else []
    if which == "best":
      return best
    # Highest best_metric first (best/ before an equal latest), then newer.
    ranked = sorted(
      best + latest,
      key=lambda c: (self._score(self._meta_if_readable(*c), -np.inf), c[0] is self._best, c[1]),
      reverse=True,
    )
    return ranked

  def _meta_if_readable(self, manager, step) -> dict | None:
    try:
      return self._read_meta(manager, step)
    except UnreadableCheckpointError:
      return None

  def _restore_step(self, manager, step: int, template: Any) -> tuple[Any, dict]:
    where = manager.directory / str(step)
    meta = self._read_meta(manager, step)
    self._check_compatible(meta, where)
    signature = meta.get("state_signature")
    if signature is not None and signature != state_signature(template):
      raise self._mismatch(
        where, "its parameters or optimizer state have other shapes or structure"
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )
    except Exception as e:  # noqa: BLE001 - orbax/TensorStore raise many kinds
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__
      if signature is None:  # written before signatures: cannot tell corruption apart
        raise self._mismatch(where, reason) from None
      raise UnreadableCheckpointError(reason) from None
    return restored.state, meta

  @staticmethod
  def _mismatch(where: Path, reason: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
      f"Checkpoint {where} does not match the train state this config builds "
      f"({reason}). It was probably written with another model option or "
      "optimizer: use the config it was trained with (saved in the workdir's "
      "config.json) or a new --workdir."
    )

  @staticmethod
  def _read_meta(manager, step) -> dict:
    path = Path(manager.directory) / str(step) / "meta" / "metadata"
    try:
      meta = json.loads(path.read_text())
    except FileNotFoundError:
      raise UnreadableCheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UnreadableCheckpointError(f"{path} is unreadable ({e})") from None
    if not isinstance(meta, dict):
      raise UnreadableCheckpointError(f"{path} does not hold a JSON object")
    return meta

  def _set_aside(self, manager, step: int, error: Exception) -> None:
    where = Path(manager.directory) / str(step)
    if self.read_only:
      self._skipped.add((str(manager.directory), step))
      _warn(f"checkpoint {where} is unreadable ({error}); skipping it.")
      return
    target = (
      self.workdir / CORRUPT_DIR / f"{Path(manager.directory).name}-{step}-{int(time.time())}"
    )
    if distributed.is_primary():  # every process finds it unreadable; one moves it
      target.parent.mkdir(exist_ok=True)
      where.rename(target)
    distributed.barrier(f"cifar_jax.checkpoint.set_aside.{step}")
    manager.reload()
    _warn(
      f"checkpoint {where} is unreadable ({error}); moved it to {target} and "
      "using the previous one."
    )

  def _reconcile_best(self) -> None:
    """Copies into best/ a checkpoint of checkpoints/ whose `best_metric` beats
    best/'s: what a kill between the two saves of an epoch leaves behind."""
    better = []
    for step in self._latest.all_steps():
      accuracy = self._score(self._meta_if_readable(self._latest, step), None)
      if accuracy is not None and accuracy > self.best_accuracy:
        better.append((accuracy, step))
    if not better:
      return
    accuracy, step = max(better)
    best_dir = Path(self._best.directory)
    tmp = best_dir / f".reconcile-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(Path(self._latest.directory) / str(step), tmp)
    replaced = list(self._best.all_steps())
    for old in replaced:
      shutil.rmtree(best_dir / str(old))
    tmp.rename(best_dir / str(step))
    self._best.reload()
    previous = (
      f"step {replaced[-1]} ({self.best_metric} {self.best_accuracy:.4f})"
      if replaced
      else "nothing"
    )
    _warn(
      f"best/ held {previous}, but checkpoints/{step} scored {accuracy:.4f} (a run "
      "stopped between its two saves): copied it to best/."
    )
    self.best_accuracy = accuracy

  def _check_compatible(self, meta: dict, where: Path) -> None:
    for key in ("model", "param_count"):
      if key in meta and key in self.meta and meta[key] != self.meta[key]:
        raise CheckpointMismatchError(
          f"Checkpoint {where} was written for model {meta.get('model')} with "
          f"{meta.get('param_count')} parameters, but this config builds "
          f"{self.meta.get('model')} with {self.meta.get('param_count')}. "
          "Evaluate or resume it with the config it was trained with (the "
          "workdir's config.json), or train into a new --workdir."
        )


def latest_step(workdir: str | Path) -> int | None:
  """The step of `workdir`'s latest finalized checkpoint, None when it has
  none. Read only: it creates, moves and reconciles nothing."""
  checkpointer = Checkpointer(workdir, keep_best=False, read_only=True)
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def score(meta: dict | None, metric: str, default=None):
  """The value of `metric` among a checkpoint meta's metrics, else `default`."""
  value = ((meta or {}).get("metrics") or {}).get(metric)
  return default if value is None else float(value)
