"""The search's figure, search.png: eval accuracy against parameters, total
blocks and total channels, the best trial starred."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar_jax.search import artifacts
from cifar_jax.search import space


def plot_search(rows: list[dict[str, Any]], path: str | Path, budget: int | None = None) -> None:
  """Eval accuracy against parameters, total blocks and total channels."""
  # Imported here: matplotlib takes about a second to import, and is needed
  # only once a search has trials to draw.
  from matplotlib import ticker
  from matplotlib.figure import Figure  # no pyplot: no GUI backend involved

  rows = [r for r in rows if r.get("final_eval_accuracy") is not None]
  fig = Figure(figsize=(15, 4.5), layout="constrained")
  axes = fig.subplots(1, 3, sharey=True)
  panels = [
    ("params", "parameters", lambda r: r["params"]),
    ("blocks", "total residual blocks", lambda r: sum(r["design"]["stage_sizes"])),
    ("channels", "total channels (sum over stages)", lambda r: sum(r["design"]["widths"])),
  ]
  best = artifacts.best_trial(rows)
  max_epochs = max((r["epochs"] for r in rows), default=0)
  for ax, (_, label, x_of) in zip(axes, panels):
    full = [r for r in rows if r["epochs"] >= max_epochs]
    stopped = [r for r in rows if r["epochs"] < max_epochs]
    points = ax.scatter(
      [x_of(r) for r in full],
      [r["final_eval_accuracy"] for r in full],
      c=[len(r["design"]["stage_sizes"]) for r in full],
      cmap="viridis",
      vmin=1,
      vmax=6,
      label=f"{max_epochs} epochs",
    )
    if stopped:
      ax.scatter(
        [x_of(r) for r in stopped],
        [r["final_eval_accuracy"] for r in stopped],
        facecolors="none",
        edgecolors="tab:gray",
        label="stopped early (accuracy when stopped)",
      )
    if best is not None:
      ax.scatter(
        [x_of(best)],
        [best["final_eval_accuracy"]],
        marker="*",
        s=250,
        color="tab:red",
        zorder=3,
        label=f"best ({best['trial_id']})",
      )
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  if budget is not None and rows:
    axes[0].axvline(budget, color="tab:red", linestyle="--", linewidth=1, label="budget")
  if rows and max(r["params"] for r in rows) > 10 * min(r["params"] for r in rows):
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].xaxis.set_minor_formatter(ticker.NullFormatter())
  axes[0].xaxis.set_major_formatter(ticker.EngFormatter())
  axes[0].set_ylabel("eval accuracy")
  fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=9)
  if rows:
    fig.colorbar(points, ax=axes, label="stages", shrink=0.8)
  fig.suptitle(f"Random search of {space.MODEL_NAME} designs: {len(rows)} trials")
  fig.savefig(path, dpi=100)
