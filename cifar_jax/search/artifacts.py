"""The files of a search directory (listed in the package docstring): their
names, writing and reading them, the best trial and its config file.

trials.jsonl is append-only, one line per finished trial, so a kill can at
worst tear its last line, which reading drops (`workdir.read_jsonl`); the
files rewritten by every run (rejected.jsonl, search_state.json,
best_config.py) are replaced whole, never left half written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from cifar_jax import workdir as workdir_lib
from cifar_jax.configs import base
from cifar_jax.search import space

TRIALS_FILE = "trials.jsonl"
REJECTED_FILE = "rejected.jsonl"
STATE_FILE = "search_state.json"
BEST_CONFIG_FILE = "best_config.py"
PLOT_FILE = "search.png"
TRIALS_DIR = "trials"
RAY_RESULTS_DIR = "ray_results"


def trial_dir(workdir: str | Path, trial_id: str) -> Path:
  """Where trial `trial_id` trains: a run directory like main.py's --workdir."""
  return Path(workdir) / TRIALS_DIR / trial_id


def read_trials(workdir: str | Path) -> list[dict[str, Any]]:
  """The rows of trials.jsonl; a line cut short by a kill is ignored."""
  return workdir_lib.read_jsonl(Path(workdir) / TRIALS_FILE).rows


def append_trial(workdir: str | Path, row: dict[str, Any]) -> None:
  with open(Path(workdir) / TRIALS_FILE, "a") as f:
    workdir_lib.append_line(f, json.dumps(row))


def write_rejected(workdir: str | Path, candidates: list[dict[str, Any]]) -> None:
  workdir_lib.write_atomically(
    Path(workdir) / REJECTED_FILE, "".join(json.dumps(c) + "\n" for c in candidates)
  )


def write_state(workdir: str | Path, state: dict[str, Any]) -> None:
  workdir_lib.write_atomically(Path(workdir) / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _ranking_key(row: dict[str, Any]):
  """Longest-trained first, then final accuracy, then fewer parameters."""
  return (row["epochs"], row["final_eval_accuracy"], -row["params"])


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
  scored = [
    r for r in rows if r.get("final_eval_accuracy") is not None and r.get("status") != "diverged"
  ]
  return max(scored, key=_ranking_key) if scored else None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _literal(value: Any) -> str:
  if isinstance(value, list):
    value = tuple(value)
  return repr(value)


def best_config_source(
  config: ml_collections.ConfigDict, row: dict[str, Any], workdir: str | Path
) -> str:
  """A config file of the best design for `python -m cifar_jax.main`: base
  config, the search config's training recipe (its differences from base) and
  the design's model fields. It imports base from the installed package, so
  it loads from any working directory."""
  base_flat = _flatten(base.get_config().to_dict())
  recipe = {
    k: v
    for k, v in _flatten(config.to_dict()).items()
    if not k.startswith("search.")
    and not k.startswith("model.")
    and (k not in base_flat or _literal(base_flat[k]) != _literal(v))
  }
  flops = f", {row['flops'] / 1e9:.3g} GFLOPs" if row.get("flops") else ""
  lines = [
    f'"""Best {space.MODEL_NAME} design of the architecture search in {Path(workdir).absolute()}.',
    "",
    f"Trial {row['trial_id']}: {row['params']:,} parameters{flops}; eval accuracy "
    f"{row['final_eval_accuracy']:.4f}",
    f"(best epoch {row['best_eval_accuracy']:.4f}) on {config.dataset.eval_split} after "
    f"{row['epochs']} epochs of the search's short budget.",
    "Train it fully:",
    "    python -m cifar_jax.main --config=<this file> --workdir=runs/best",
    '"""',
    "from cifar_jax.configs import base",
    "",
    "",
    "def get_config():",
    "  config = base.get_config()",
    f"  config.model.name = {space.MODEL_NAME!r}",
  ]
  lines += [f"  config.model.{k} = {_literal(v)}" for k, v in row["design"].items()]
  lines += [f"  config.{k} = {_literal(v)}" for k, v in sorted(recipe.items())]
  lines += ["  return config", ""]
  return "\n".join(lines)


def write_best_config(
  config: ml_collections.ConfigDict, row: dict[str, Any], workdir: str | Path
) -> Path:
  path = Path(workdir) / BEST_CONFIG_FILE
  workdir_lib.write_atomically(path, best_config_source(config, row, workdir))
  return path
