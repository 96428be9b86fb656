"""Lists the registered models with their parameter and FLOP counts.

    python -m cifar_jax.models            # aligned table
    python -m cifar_jax.models --json     # JSON list of {"name", "params", "flops"}

FLOPs are XLA's cost-analysis count for one 32x32x3 image in eval mode (see
cifar_jax/models/summary.py); each model is compiled once for it, which takes
a while for the large transformers. ``--no-flops`` skips the compilation.

    python -m cifar_jax.models resnet18 --layers            # per-layer table
    python -m cifar_jax.models resnet18 --layers --depth=1  # top-level modules only

``--layers`` prints flax's ``nn.tabulate`` of each named model on a
(1, 32, 32, 3) input: per module its input and output shapes, XLA's FLOPs
of that module and its parameters (``--no-flops`` leaves FLOPs out).
"""

from __future__ import annotations

import argparse
import json
import sys

from cifar_jax import models
from cifar_jax.models import summary


def format_table(rows: list[dict]) -> str:
  header = ("model", "params", "MFLOPs")
  body = [
    (r["name"], f"{r['params']:,}", "-" if r["flops"] is None else f"{r['flops'] / 1e6:,.1f}")
    for r in rows
  ]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(3)]
  lines = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}"]
  lines.append("-" * len(lines[0]))
  for name, params, flops in body:
    lines.append(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {flops:>{widths[2]}}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m cifar_jax.models",
    description="List registered models with parameter counts and forward "
    "FLOPs (XLA's count, one 32x32x3 image, eval mode).",
  )
  parser.add_argument(
    "--json", action="store_true", help="print a JSON list of {name, params, flops}"
  )
  parser.add_argument(
    "--no-flops", action="store_true", help="skip the XLA compilation that counts FLOPs"
  )
  parser.add_argument(
    "--layers",
    action="store_true",
    help="print a per-layer table (shapes, FLOPs, parameters) of each NAME",
  )
  parser.add_argument(
    "--depth",
    type=int,
    default=None,
    help="with --layers: list submodules this deep only (default: all)",
  )
  parser.add_argument(
    "names", nargs="*", metavar="NAME", help="models to list (default: all registered)"
  )
  args = parser.parse_args(argv)
  names = args.names or models.model_names()
  unknown = sorted(set(names) - set(models.model_names()))
  if unknown:
    parser.error(
      f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(models.model_names())}"
    )
  if args.layers:
    if not args.names or args.json:
      parser.error(
        "--layers prints a table per model: name the model(s), e.g. "
        "`python -m cifar_jax.models resnet18 --layers`, without --json"
      )
    for name in names:
      print(f"{name}\n{summary.layer_table(name, flops=not args.no_flops, depth=args.depth)}")
    return 0
  rows = [summary.model_stats(name, flops=not args.no_flops) for name in names]
  if args.json:
    json.dump(rows, sys.stdout, indent=1)
    sys.stdout.write("\n")
  else:
    print(format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
