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


def config_or_exit(prog: str):
  """`FLAGS.config`, or one line when its file cannot be loaded (config_flags
  then hands out a stand-in that raises OSError, with a long story, on first
  use)."""
  config = flags.FLAGS.config
  try:
    config.keys()  # a file that failed to load is a stand-in that raises here
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    sys.exit(f"{prog}: error: cannot load the --config file: {reason}. Pass a path such "
             "as configs/resnet18.py.")
  return config
