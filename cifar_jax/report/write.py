"""Writing a report: which figures the runs have data for, saved as PNGs
next to the report.md that embeds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from typing import Sequence

from matplotlib.figure import Figure

from cifar_jax.report import figures as figures_lib
from cifar_jax.report import markdown
from cifar_jax.report.runs import load_runs


def _save(fig: Figure, path: Path, written: list[Path]) -> None:
  fig.savefig(path, dpi=100)
  written.append(path)


def write_report(workdirs: Sequence[str | Path], out: str | Path, flops: bool = True) -> list[Path]:
  """Writes the pictures and report.md for `workdirs` into `out`; returns their paths."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  runs = load_runs(workdirs, flops=flops)
  written: list[Path] = []
  figures: dict[str, Any] = {run.slug: {} for run in runs}
  if any(run.metrics for run in runs):
    _save(figures_lib.curves_figure(runs), out / "curves.png", written)
    figures["curves"] = "curves.png"
  else:
    figures["curves_missing"] = "no run has metrics yet"
  if any(r.primary_eval and r.primary_eval.get("per_class_accuracy") for r in runs):
    _save(figures_lib.per_class_figure(runs), out / "per_class.png", written)
    figures["per_class"] = "per_class.png"
  else:
    figures["per_class_missing"] = "no run has been evaluated with --mode=eval yet"
  if any(run.params and run.accuracy_point for run in runs):
    _save(figures_lib.accuracy_vs_params_figure(runs), out / "accuracy_vs_params.png", written)
    figures["accuracy_vs_params"] = "accuracy_vs_params.png"
  else:
    figures["accuracy_vs_params_missing"] = "no run has both an accuracy and a parameter count"
  for run in runs:
    result = run.primary_eval
    if result and result.get("confusion_matrix"):
      name = f"confusion_{run.slug}.png"
      _save(
        figures_lib.confusion_figure(
          result["confusion_matrix"],
          result.get("class_names", []),
          figures_lib.eval_title(run, result),
        ),
        out / name,
        written,
      )
      figures[run.slug]["confusion"] = name
    mistakes = result.get("mistakes") if result else None
    if mistakes is not None and len(mistakes.get("images", [])):
      name = f"mistakes_{run.slug}.png"
      _save(
        figures_lib.mistakes_figure(mistakes, figures_lib.mistakes_title(run, result)),
        out / name,
        written,
      )
      figures[run.slug]["mistakes"] = name
  (out / "report.md").write_text(markdown.report_markdown(runs, figures) + "\n")
  written.append(out / "report.md")
  return written
