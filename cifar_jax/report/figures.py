"""The report's pictures, as matplotlib figures: one function per figure.

curves (loss and accuracy per epoch), confusion (a confusion matrix, also
rendered to an array by `confusion_image` for TensorBoard), per_class
(per-class accuracy), accuracy_vs_params and mistakes (misclassified
images), plus their titles and the shared axis formats and run colours (run
i is colour Ci in every figure). Figures are built without pyplot, so there
is no global state: safe in tests and threads.
"""

from __future__ import annotations

import math
from typing import Any
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from matplotlib.ticker import MaxNLocator

from cifar_jax.report.runs import RunData
from cifar_jax.report.runs import is_validation


# ---- figures, axes and colours --------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
  """A pyplot-free Agg figure (no global state, safe in tests and threads)."""
  fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def figure_to_array(fig: Figure) -> np.ndarray:
  """The rendered figure as (H, W, 3) uint8."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _short_count(x: float) -> str:
  """62000 -> '62k', 1.5e6 -> '1.5M'."""
  for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.3g}{suffix}"
  return f"{x:.3g}"


def _log_count_axis(axis) -> None:
  """Log-axis tick labels as 50k / 1M; 2x and 5x minor ticks labelled when
  the axis spans few decades."""

  def label(x, pos, minor):
    if x <= 0:
      return ""
    if minor:
      low, high = axis.get_view_interval()
      coeff = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
      if math.log10(high / low) > 2.5 or coeff not in (2, 5):
        return ""
    return _short_count(x)

  axis.set_major_formatter(FuncFormatter(lambda x, pos: label(x, pos, False)))
  axis.set_minor_formatter(FuncFormatter(lambda x, pos: label(x, pos, True)))


def _percent_axis(axis) -> None:
  axis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
  axis.set_major_formatter(FuncFormatter(lambda x, pos: f"{x:g}%"))


def _color(i: int) -> str:
  return f"C{i % 10}"


# ---- titles ---------------------------------------------------------------------------
def split_label(split: str | None) -> str:
  if not split:
    return "eval"
  return f"validation ({split})" if is_validation(split) else f"eval ({split})"


def eval_title(run: RunData, result: dict[str, Any]) -> str:
  """Title of the confusion matrix of `result`, one of `run.evals`."""
  split = result.get("split")
  return (
    f"{run.name}: {split_label(split)}, step {result.get('step')}\n"
    f"accuracy {100 * result['accuracy']:.2f}% on "
    f"{result.get('num_examples', '?'):,} examples"
  )


def mistakes_title(run: RunData, result: dict[str, Any]) -> str:
  """Title of the misclassified images of `result`, saying whether they are all."""
  wrong = round(result.get("num_examples", 0) * (1 - result["accuracy"]))
  shown = len(result["mistakes"]["images"])
  which = f"all {shown}" if shown >= wrong else f"the first {shown} of {wrong:,}"
  return f"{run.name}: {which} misclassified examples, {split_label(result.get('split'))}"


# ---- the figures ----------------------------------------------------------------------
def curves_figure(runs: Sequence[RunData]) -> Figure:
  """Loss and accuracy per epoch: colour = run, solid = eval, dashed = train."""
  fig = new_figure(12, 5)
  ax_loss, ax_acc = fig.subplots(1, 2)
  for i, run in enumerate(runs):
    for key, style in (("train", "--"), ("eval", "-")):
      for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "accuracy", 100.0)):
        epochs, values = run.series(f"{key}_{metric}")
        if epochs:
          ax.plot(
            epochs,
            np.asarray(values) * scale,
            style,
            color=_color(i),
            marker="o" if len(epochs) < 30 else None,
            markersize=3,
          )
  splits = {r.eval_split for r in runs if r.metrics}
  eval_label = split_label(splits.pop()) if len(splits) == 1 else "eval"
  for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.set_xlabel("epoch")
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax_loss.set_ylabel("cross-entropy loss")
  ax_acc.set_ylabel("accuracy")
  _percent_axis(ax_acc.yaxis)
  handles = [
    ax_acc.plot([], [], "-", color=_color(i), label=run.name)[0]
    for i, run in enumerate(runs)
    if run.metrics
  ]
  handles += [
    ax_acc.plot([], [], "-", color="k", label=eval_label)[0],
    ax_acc.plot([], [], "--", color="k", label="train (augmented batches)")[0],
  ]
  fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
  return fig


def confusion_figure(
  confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = ""
) -> Figure:
  """Row-normalised confusion matrix (colour) with the counts in the cells."""
  counts = np.asarray(confusion, dtype=np.int64)
  n = len(counts)
  fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  size = max(6.0, 0.6 * n + 2.5)
  fig = new_figure(size + 1.2, size)
  ax = fig.subplots()
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  if n <= 30:
    fontsize = 9 if n <= 12 else 6
    for t in range(n):
      for p in range(n):
        ax.text(
          p,
          t,
          f"{counts[t, p]}",
          ha="center",
          va="center",
          fontsize=fontsize,
          color="white" if fractions[t, p] > 0.55 else "black",
        )
  names = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
  ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
  ax.set_yticks(range(n), names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  if title:
    ax.set_title(title)
  fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class (row-normalised)")
  return fig


def confusion_image(result: dict[str, Any], title: str | None = None) -> np.ndarray:
  """(H, W, 3) uint8 picture of an eval result's confusion matrix (for TensorBoard)."""
  if title is None:
    title = (
      f"{result.get('model', '')} {split_label(result.get('split'))}, "
      f"step {result.get('step')}: accuracy {100 * result['accuracy']:.2f}%"
    )
  return figure_to_array(confusion_figure(result["confusion_matrix"], result["class_names"], title))


def per_class_figure(runs: Sequence[RunData]) -> Figure:
  """Per-class accuracy of each evaluated run, bars grouped by class."""
  runs = [
    (i, r)
    for i, r in enumerate(runs)
    if r.primary_eval and r.primary_eval.get("per_class_accuracy")
  ]
  names = list(runs[0][1].primary_eval["per_class_accuracy"])
  fig = new_figure(min(16.0, max(10.0, 0.3 * len(names) * len(runs) + 2)), 5)
  ax = fig.subplots()
  width = 0.8 / len(runs)
  x = np.arange(len(names))
  for j, (i, run) in enumerate(runs):
    result = run.primary_eval
    values = [100 * result["per_class_accuracy"].get(c, np.nan) for c in names]
    ax.bar(
      x - 0.4 + width * (j + 0.5),
      values,
      width,
      color=_color(i),
      label=f"{run.name}: {100 * result['accuracy']:.1f}% overall",
    )
  ax.set_xticks(
    x,
    names,
    rotation=30 if len(names) > 6 else 0,
    ha="right" if len(names) > 6 else "center",
    rotation_mode="anchor",
  )
  ax.set_ylim(0, 100)
  _percent_axis(ax.yaxis)
  ax.set_ylabel("accuracy on the class")
  splits = {r.primary_eval.get("split") for _, r in runs}
  ax.set_title(
    "per-class accuracy" + (f", {split_label(splits.pop())}" if len(splits) == 1 else "")
  )
  ax.grid(axis="y", alpha=0.3)
  fig.legend(loc="outside lower center", ncols=min(len(runs), 3), frameon=False)
  return fig


def accuracy_vs_params_figure(runs: Sequence[RunData]) -> Figure:
  """Accuracy against parameter count (log x), each point labelled with its model."""
  points = [
    (i, run, *run.accuracy_point) for i, run in enumerate(runs) if run.params and run.accuracy_point
  ]
  fig = new_figure(8, 5.5)
  ax = fig.subplots()
  models = [run.model for _, run, _, _ in points]
  for k, (i, run, acc, from_file) in enumerate(points):
    ax.scatter(
      run.params,
      100 * acc,
      s=60,
      zorder=3,
      edgecolors=_color(i),
      facecolors=_color(i) if from_file else "none",
    )
    label = run.model if models.count(run.model) == 1 else run.name
    ax.annotate(
      label,
      (run.params, 100 * acc),
      xytext=(7, 7 if k % 2 == 0 else -12),
      textcoords="offset points",
      fontsize=9,
    )
  ax.set_xscale("log")
  params = np.array([run.params for _, run, _, _ in points], dtype=float)
  accs = np.array([100 * acc for _, _, acc, _ in points])
  ax.set_xlim(params.min() / 3, params.max() * 4)  # room for the labels
  ax.set_ylim(max(0.0, accs.min() - 10), min(100.0, accs.max() + 10))
  _percent_axis(ax.yaxis)
  _log_count_axis(ax.xaxis)
  ax.set_xlabel("trainable parameters (log scale)")
  ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)
  ax.grid(alpha=0.1, which="minor")
  ax.set_title("accuracy against model size")
  if not all(from_file for *_, from_file in points):
    ax.scatter([], [], edgecolors="k", facecolors="k", label="--mode=eval result")
    ax.scatter([], [], edgecolors="k", facecolors="none", label="last logged eval accuracy")
    ax.legend(loc="lower right", fontsize=9)
  return fig


def mistakes_figure(mistakes: dict[str, np.ndarray], title: str = "", columns: int = 8) -> Figure:
  """A grid of misclassified images with their true and predicted labels."""
  images, labels, predictions = mistakes["images"], mistakes["labels"], mistakes["predictions"]
  names = [str(c) for c in mistakes.get("class_names", [])]
  name = lambda c: names[int(c)] if int(c) < len(names) else str(int(c))
  n = len(images)
  columns = min(columns, n)
  rows = -(-n // columns)
  fig = new_figure(1.55 * columns, 1.85 * rows + 0.6)
  axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).reshape(-1)
  for k, ax in enumerate(axes):
    ax.set_xticks([])
    ax.set_yticks([])
    if k >= n:
      ax.set_axis_off()
      continue
    ax.imshow(images[k], interpolation="nearest")
    ax.set_title(f"true: {name(labels[k])}", fontsize=8, pad=2)
    ax.set_xlabel(f"pred: {name(predictions[k])}", fontsize=8, color="C3", labelpad=2)
  if title:
    fig.suptitle(title)
  return fig
