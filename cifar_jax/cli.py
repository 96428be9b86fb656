"""Flag parsing shared by the command-line entry points (main, search).

config_flags raises AttributeError/KeyError/TypeError/ValueError for a bad
`--config.<key>=<value>` override; users get one line naming it instead of a
traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from absl import flags


def flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """An absl `flags_parser` for `app.run` that exits with `prog: error: ...`."""
  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f"{prog}: error: {e}\nPass --help for the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      message = " ".join(str(e).replace("\\n", "\n").replace("\\'", "").replace("'", "").split())
      sys.exit(f"{prog}: error: bad --config override: {message.rstrip('.')}. The keys "
               "are those of configs/base.py plus the config file's.")
  return parse
