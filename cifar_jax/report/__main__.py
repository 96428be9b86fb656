"""Command line of the report: the workdirs in, the pictures and report.md out.

    python -m cifar_jax.report --out=reports/cmp runs/lenet5 runs/r18
    python -m cifar_jax.report --out=reports/cmp --workdirs=runs/lenet5,runs/r18
    python -m cifar_jax.report --out=docs/zoo --keep_records=docs/zoo/records runs/recipe_*

write curves.png, confusion_<run>.png, per_class.png, accuracy_vs_params.png,
mistakes_<run>.png and report.md into OUT (cifar_jax/report/__init__.py says
what each shows). The workdirs are the arguments after the flags and/or the
comma-separated --workdirs (those come first), so `--workdirs runs/lenet5
runs/r18` works too. `--noflops` skips the FLOP count, which compiles each
model once. `--keep_records=DIR` first copies what the report reads of each
workdir (config.json, metrics.jsonl, the eval files; not the checkpoints)
into DIR/<workdir name>/ and then reports over every run kept in DIR, so the
runs of earlier sessions or machines, whose workdirs are gone, stay in it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from absl import flags

from cifar_jax import cli
from cifar_jax.report import runs
from cifar_jax.report import write

PROG = "cifar_jax.report"

# Flag values of its own, not absl's global ones: tests call `main` in a
# process that also holds cifar_jax.main's required flags.
FLAGS = flags.FlagValues()
flags.DEFINE_list(
  "workdirs",
  [],
  "Run directories, comma-separated; or pass them after the "
  "flags, space-separated (the way for a name with a comma).",
  flag_values=FLAGS,
)
flags.DEFINE_string("out", None, "Directory for the report (created if needed).", flag_values=FLAGS)
flags.DEFINE_bool(
  "flops",
  True,
  "Count each model's FLOPs (compiles it once, on the CPU); --noflops skips it.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "keep_records",
  None,
  "Archive of run records: copy each workdir's records into DIR/<name>/ (a copy with "
  "more epoch records is never replaced) and report over every run kept there.",
  flag_values=FLAGS,
)
flags.mark_flag_as_required("out", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  """Writes the report for the command line `argv` (without the program name;
  None: sys.argv's)."""
  positional = cli.parse_own_flags(FLAGS, argv, PROG, __doc__)
  workdirs = [*FLAGS.workdirs, *positional]
  if FLAGS.keep_records:
    try:
      workdirs, notes = runs.keep_records(workdirs, FLAGS.keep_records)
    except ValueError as e:
      sys.exit(f"{PROG}: error: {e}")
    for note in notes:
      print(f"{PROG}: {note}", file=sys.stderr)
  if not workdirs:
    sys.exit(
      f"{PROG}: error: no workdirs: pass them after the flags "
      "(`python -m cifar_jax.report --out=DIR runs/a runs/b`) or as "
      "--workdirs=runs/a,runs/b."
    )
  # The FLOP count compiles each model: on the CPU, so that a report never
  # grabs the memory of a GPU that is training.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  written = write.write_report(workdirs, FLAGS.out, flops=FLAGS.flops)
  print(f"Wrote {len(written)} files; open {Path(FLAGS.out) / 'report.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  cli.start_program()
  sys.exit(main())
