"""What the report knows of a run: its workdir read into a `RunData`.

A workdir holds config.json, metrics.jsonl (read through `cifar_jax.records`)
and the eval_<split>.json / eval_<split>_mistakes.npz of `--mode=eval`; any of
them may be missing or partial (a run still starting, training or stopped),
which `load_run` notes instead of raising. `load_runs` adds the FLOP count of
`cifar_jax.models.summary`, the one step that imports jax. `keep_records`
copies those files (and nothing else: no checkpoints) into an archive, so a
report can be written again after the workdirs are gone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any
from typing import Sequence

import numpy as np

from cifar_jax import records  # jax-free, as is writers,
from cifar_jax import writers  # so the report starts fast

MISTAKES_SUFFIX = "_mistakes"
# Everything `load_run` reads of a workdir.
RECORD_PATTERNS = (
  "config.json",
  records.METRICS_FILE,
  "eval_*.json",
  f"eval_*{MISTAKES_SUFFIX}.npz",
)


@dataclasses.dataclass
class RunData:
  """What a workdir holds; missing pieces are None / empty, with `notes` why."""

  workdir: Path
  slug: str  # filesystem-safe, unique among the runs of one report
  config: dict[str, Any] | None = None
  metrics: list[records.EpochRecord] = dataclasses.field(default_factory=list)
  evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # primary first
  notes: list[str] = dataclasses.field(default_factory=list)
  stats: dict[str, Any] | None = None  # models.summary.model_stats, when available

  @property
  def model(self) -> str:
    if self.config and isinstance(self.config.get("model"), dict):
      return str(self.config["model"].get("name", "unknown"))
    return str(self.evals[0].get("model", "unknown")) if self.evals else "unknown"

  @property
  def name(self) -> str:
    """Display name: workdir basename + model."""
    return self.slug if self.model in (self.slug, "unknown") else f"{self.slug} ({self.model})"

  @property
  def eval_split(self) -> str | None:
    if self.config and isinstance(self.config.get("dataset"), dict):
      return self.config["dataset"].get("eval_split")
    return self.evals[0].get("split") if self.evals else None

  @property
  def num_epochs(self) -> float | None:
    return self.config.get("num_epochs") if self.config else None

  @property
  def primary_eval(self) -> dict[str, Any] | None:
    return self.evals[0] if self.evals else None

  def series(self, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that have a finite `key`."""
    pairs = [
      (r["epoch"], r[key])
      for r in self.metrics
      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]

  @property
  def params(self) -> int | None:
    for e in self.evals:
      if isinstance(e.get("param_count"), int):
        return e["param_count"]
    return self.stats["params"] if self.stats else None

  @property
  def flops(self) -> float | None:
    return self.stats.get("flops") if self.stats else None

  @property
  def accuracy_point(self) -> tuple[float, bool] | None:
    """(accuracy, from an eval file?): the eval file's, else the last logged one."""
    if self.primary_eval:
      return self.primary_eval["accuracy"], True
    _, values = self.series(self.accuracy_key)
    return (values[-1], False) if values else None

  @property
  def accuracy_key(self) -> str:
    """The record key of the weights the run is judged by (records.best_metric)."""
    return records.best_metric(self.config)


def safe_name(name: str) -> str:
  """A workdir basename usable in a file name: 'my run/1' -> 'my_run_1'."""
  return writers.file_safe_name(name, "run")


def is_validation(split: str | None) -> bool:
  """A slice of the training split (e.g. train[45000:]) held out for validation."""
  return bool(split) and split.startswith("train")


def _read_json(path: Path, run: RunData, what: str) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    run.notes.append(f"unreadable {what} `{path.name}` ({type(e).__name__}: {e})")
    return None


def _read_metrics(run: RunData) -> list[records.EpochRecord]:
  """The epoch records; other lines are skipped and noted, except a bad last
  line: that is a run writing it right now."""
  contents = records.read(run.workdir)
  run.notes.extend(
    f"skipped a malformed line {n} of `{records.METRICS_FILE}`"
    for n in contents.bad_lines
    if n != contents.num_lines
  )
  return contents.records


def _load_mistakes(path: Path) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except (OSError, ValueError, KeyError):
    return None


def load_run(workdir: str | Path, slug: str | None = None) -> RunData:
  """Reads what a workdir holds; never raises for missing or partial files."""
  workdir = Path(workdir)
  run = RunData(workdir=workdir, slug=slug or safe_name(workdir.resolve().name))
  if not workdir.is_dir():
    run.notes.append(f"workdir `{workdir}` does not exist")
    return run
  if (workdir / "config.json").exists():
    config = _read_json(workdir / "config.json", run, "config")
    run.config = config if isinstance(config, dict) else None
  else:
    run.notes.append("missing `config.json`: not a cifar_jax workdir, or the run has not started")
  run.metrics = _read_metrics(run)
  if not run.metrics:
    run.notes.append(
      "no metrics yet: the run has not finished its first epoch (still starting, or it was stopped)"
    )
  elif run.num_epochs and run.metrics[-1]["epoch"] < run.num_epochs:
    run.notes.append(
      f"only {run.metrics[-1]['epoch']} of {run.num_epochs:g} epochs done: "
      "the run is still going (or was stopped; the same command resumes it)"
    )
  for path in sorted(workdir.glob("eval_*.json")):
    result = _read_json(path, run, "evaluation")
    if isinstance(result, dict) and isinstance(result.get("accuracy"), (int, float)):
      result["file"] = path.name
      result["mistakes"] = _load_mistakes(path.with_name(path.stem + MISTAKES_SUFFIX + ".npz"))
      run.evals.append(result)
  # The evaluation of the config's eval split first, then the newest.
  run.evals.sort(
    key=lambda e: (e.get("split") != run.eval_split, -(workdir / e["file"]).stat().st_mtime)
  )
  if not run.evals:
    run.notes.append(
      "no evaluation yet: run `python -m cifar_jax.main --config=... "
      f"--workdir={workdir} --mode=eval`"
    )
  return run


def _add_model_stats(run: RunData, cache: dict) -> None:
  """FLOPs (and parameters) from cifar_jax.models.summary, if it exists."""
  if not run.config or not isinstance(run.config.get("model"), dict):
    return
  try:
    from cifar_jax.models import summary
  except Exception:  # not written yet, or broken: FLOPs are then "n/a"
    return
  options = {
    k: tuple(v) if isinstance(v, list) else v for k, v in run.config["model"].items() if k != "name"
  }
  num_classes = (run.config.get("dataset") or {}).get("num_classes")
  if num_classes:
    options["num_classes"] = num_classes
  key = (run.model, json.dumps(options, sort_keys=True, default=str))
  if key not in cache:
    try:
      cache[key] = summary.model_stats(run.model, **options)
    except Exception as e:  # a model this version cannot build: report, don't fail
      cache[key] = None
      run.notes.append(f"could not compute FLOPs ({type(e).__name__}: {e})")
  run.stats = cache[key]


def load_runs(workdirs: Sequence[str | Path], flops: bool = True) -> list[RunData]:
  """Loads every workdir, giving each a unique file-name slug."""
  slugs: list[str] = []
  for workdir in workdirs:
    base = safe_name(Path(workdir).resolve().name)
    slug, n = base, 2
    while slug in slugs:
      slug, n = f"{base}_{n}", n + 1
    slugs.append(slug)
  runs = [load_run(w, s) for w, s in zip(workdirs, slugs)]
  if flops:
    cache: dict = {}
    for run in runs:
      _add_model_stats(run, cache)
  return runs


def _epochs_recorded(workdir: Path) -> int:
  return len(records.read(workdir).records)


def keep_records(
  workdirs: Sequence[str | Path], archive: str | Path
) -> tuple[list[Path], list[str]]:
  """Copies what the report reads of each workdir (RECORD_PATTERNS; never
  checkpoints) into archive/<workdir name>/, then returns every run the
  archive holds (sorted) and notes on what was not copied.

  A kept copy is replaced whole (written aside, then renamed), and only by a
  workdir with at least as many epoch records: a rerun that has just started
  under the same name never overwrites a finished run's records."""
  archive = Path(archive)
  names = [Path(w).resolve().name for w in workdirs]
  clashes = sorted({n for n in names if names.count(n) > 1})
  if clashes:
    raise ValueError(
      f"workdirs share the name {', '.join(clashes)}: their records would overwrite each "
      "other in the archive; rename one of the workdirs"
    )
  notes = []
  for workdir, name in zip(map(Path, workdirs), names):
    if not (workdir / "config.json").is_file():
      notes.append(f"`{workdir}` has no config.json (not a cifar_jax workdir): nothing kept")
      continue
    kept = archive / name
    if kept.is_dir() and _epochs_recorded(workdir) < _epochs_recorded(kept):
      notes.append(
        f"`{workdir}` has fewer epoch records than its kept copy `{kept}`: the copy is kept "
        "(delete it to replace it)"
      )
      continue
    archive.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=archive))
    for pattern in RECORD_PATTERNS:
      for path in sorted(workdir.glob(pattern)):
        shutil.copy2(path, staging / path.name)
    old = archive / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)  # left by a kill between the two renames
    if kept.exists():
      kept.rename(old)
    staging.rename(kept)
    shutil.rmtree(old, ignore_errors=True)
  if not archive.is_dir():
    return [], notes
  runs = sorted(p for p in archive.iterdir() if p.is_dir() and not p.name.startswith("."))
  return runs, notes
