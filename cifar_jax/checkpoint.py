"""Orbax checkpoints of the train state: latest N, the best by eval accuracy.

`DIR/checkpoints/` keeps the last `checkpoint.max_to_keep` saves and is what a
restarted run resumes from; `DIR/best/` keeps the one save with the highest
eval accuracy. Every save also stores a small JSON `meta` item (model name,
options, parameter count, step, metrics) that is read first on restore, so a
checkpoint of a different model fails with a clear message instead of an
opaque shape error or, worse, a silent re-initialisation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a different model, shape or optimizer."""


class NoCheckpointError(FileNotFoundError):
  """The workdir holds no checkpoint to evaluate."""


class Checkpointer:
  """Saves and restores one run's train state under `workdir`."""

  def __init__(self, workdir: str | Path, *, max_to_keep: int = 2,
               keep_best: bool = True, meta: dict[str, Any] | None = None,
               read_only: bool = False):
    self.workdir = Path(workdir).absolute()
    self.meta = dict(meta or {})

    def manager(sub: str, keep: int) -> ocp.CheckpointManager:
      options = ocp.CheckpointManagerOptions(
          # Read-only managers must not prune or save (orbax warns otherwise).
          max_to_keep=None if read_only else keep,
          save_interval_steps=0 if read_only else 1,
          create=not read_only, read_only=read_only,
          enable_async_checkpointing=False)  # steps donate the state's buffers
      return ocp.CheckpointManager(self.workdir / sub, options=options)

    self._latest = manager("checkpoints", max(max_to_keep, 1))
    self._best = manager("best", 1) if keep_best else None
    best_meta = self._read_meta(self._best, self._best.latest_step()) if self._best else None
    self.best_accuracy = ((best_meta or {}).get("metrics") or {}).get("eval_accuracy", -1.0)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state: Any, metrics: dict[str, Any] | None = None) -> None:
    """Saves `state` at `step` (once per step); also to best/ when
    `metrics['eval_accuracy']` beats every earlier save."""
    meta = {**self.meta, "step": int(step), "metrics": metrics}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    if step not in self._latest.all_steps():
      self._latest.save(step, args=args)
    accuracy = (metrics or {}).get("eval_accuracy")
    if self._best is not None and accuracy is not None and accuracy > self.best_accuracy:
      if step not in self._best.all_steps():
        self._best.save(step, args=args)
      self.best_accuracy = accuracy

  def restore(self, template: Any, which: str = "latest") -> tuple[Any, dict] | None:
    """Restores into the structure, shapes and shardings of `template`.

    `which` is "latest", "best" or "best_or_latest". Returns (state, meta), or
    None when there is no checkpoint.
    """
    manager, step = self._pick(which)
    if step is None:
      return None
    meta = self._read_meta(manager, step) or {}
    self._check_compatible(meta, manager.directory / str(step))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"Checkpoint {manager.directory / str(step)} does not match the train state "
          f"this config builds ({str(e).splitlines()[0][:300]}). It was probably "
          "written with another model option or optimizer: use the config it was "
          "trained with (saved in the workdir's config.json) or a new --workdir.") from None
    return restored.state, meta

  def wait(self) -> None:
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    if self._best is not None:
      self._best.close()

  # ---- internals -------------------------------------------------------------
  def _pick(self, which: str):
    if which not in ("latest", "best", "best_or_latest"):
      raise ValueError(f"which must be latest, best or best_or_latest, not {which!r}")
    if which != "latest" and self._best is not None and self._best.latest_step() is not None:
      return self._best, self._best.latest_step()
    if which == "best":
      return self._latest, None
    return self._latest, self._latest.latest_step()

  @staticmethod
  def _read_meta(manager, step) -> dict | None:
    if manager is None or step is None:
      return None
    path = manager.directory / str(step) / "meta" / "metadata"
    if path.exists():  # Cheaper and more robust than a partial orbax restore.
      return json.loads(path.read_text())
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def _check_compatible(self, meta: dict, where: Path) -> None:
    for key in ("model", "param_count"):
      if key in meta and key in self.meta and meta[key] != self.meta[key]:
        raise CheckpointMismatchError(
            f"Checkpoint {where} was written for model {meta.get('model')} with "
            f"{meta.get('param_count')} parameters, but this config builds "
            f"{self.meta.get('model')} with {self.meta.get('param_count')}. "
            "Evaluate or resume it with the config it was trained with (the "
            "workdir's config.json), or train into a new --workdir.")
