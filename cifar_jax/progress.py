"""Progress bars on the terminal, for training epochs and long evaluations.

Shown only when stderr is a terminal, so logs, CI output and the tests'
captured streams get no carriage-return noise; the epoch's summary line is
what the logs keep.
"""

from __future__ import annotations

import sys


def bar(total: int, desc: str, *, initial: int = 0, unit: str = "step", show: bool = True):
  """A tqdm bar on stderr that leaves no line behind when it closes; with
  `show` False (or no terminal) a silent stand-in with the same methods."""
  from tqdm.auto import tqdm

  return tqdm(
    total=total,
    initial=initial,
    desc=desc,
    unit=unit,
    leave=False,
    dynamic_ncols=True,
    file=sys.stderr,
    disable=not (show and sys.stderr.isatty()),
  )
