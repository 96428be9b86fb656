"""Reports users look at: curves, confusion matrices, mistakes and a summary.

    python -m cifar_jax.report --out=reports/cmp runs/lenet5 runs/r18

reads each run's workdir (config.json, metrics.jsonl and the eval_<split>.json
/ eval_<split>_mistakes.npz written by `--mode=eval`) and writes into OUT:

  curves.png              loss and accuracy per epoch, one colour per run
  confusion_<run>.png     row-normalised confusion matrix, counts in the cells
  per_class.png           per-class accuracy, bars grouped across runs
  accuracy_vs_params.png  accuracy against parameter count (log x)
  mistakes_<run>.png      misclassified images with true and predicted labels
  report.md               a table per run, embedding the pictures

A run that lacks something (no config.json, no metrics yet, no evaluation
yet) is reported as such; the plots needing it leave it out. With
`--keep_records=DIR` those record files (never the checkpoints) are first
copied into DIR and the report covers every run kept there, so it can be
written again after the workdirs are gone (`keep_records`).

The modules: `runs` reads a workdir into a `RunData`, `figures` draws,
`markdown` writes report.md's text, `write` saves them all, `__main__` is the
command. Importing the package imports no jax (only the FLOP count does), so
the report starts fast.
"""

from cifar_jax.report.runs import RunData
from cifar_jax.report.runs import keep_records
from cifar_jax.report.runs import load_run
from cifar_jax.report.runs import load_runs
from cifar_jax.report.write import write_report

__all__ = ["RunData", "keep_records", "load_run", "load_runs", "write_report"]
