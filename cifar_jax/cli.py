"""How every command-line entry point starts and parses its (absl) flags.

`start_program()` is the first statement of every program's `__main__`
(main, search, report, the scripts): it may re-execute the process for huge
pages, and it quiets TensorFlow. Programs with a `--config` file (main,
search) use absl's global flags, as ml_collections' config_flags does, and
`app.run(main, flags_parser=flags_parser(prog))`; the others, whose
`main(argv)` tests call in the same process as main's, keep their flags in
their own `FlagValues` and parse them with `parse_own_flags`. Either way a
bad flag is one line, not a traceback: config_flags raises
AttributeError/KeyError/TypeError/ValueError for a bad
`--config.<key>=<value>` override, and the message names it.
"""

from __future__ import annotations

import os
import sys
from typing import Callable
from typing import Sequence

from absl import flags

from cifar_jax import host_memory


def start_program() -> None:
  """First thing in a program: nothing done before it survives (it may
  re-execute the process, see host_memory.py)."""
  host_memory.use_huge_pages()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data here.


def parse_own_flags(
  flag_values: flags.FlagValues, argv: Sequence[str] | None, prog: str, description: str
) -> list[str]:
  """Parses `argv` (without the program name; None: sys.argv's) into
  `flag_values`; `--help` prints `description` and the flags and exits.
  Returns the arguments that are not flags."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv):
    print(
      f"usage: {prog} [flags]\n\n{description.strip()}\n\nflags:\n"
      f"{flag_values.get_help(prefix='  ')}"
    )
    sys.exit(0)
  flag_values.unparse_flags()  # a second call (tests) starts from the defaults
  return flags_parser(prog, flag_values)([prog, *argv])[1:]


def flags_parser(
  prog: str, flag_values: flags.FlagValues = flags.FLAGS
) -> Callable[[list[str]], list[str]]:
  """An absl `flags_parser` for `app.run` that exits with `prog: error: ...`."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flag_values(argv)
    except flags.Error as e:
      sys.exit(f"{prog}: error: {e}\nPass --help for the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      message = " ".join(str(e).replace("\\n", "\n").replace("\\'", "").replace("'", "").split())
      sys.exit(
        f"{prog}: error: bad --config override: {message.rstrip('.')}. The keys "
        "are those of configs/base.py plus the config file's."
      )

  return parse


def start_main(argv: Sequence[str]) -> None:
  """What an absl `main(argv)` of a program with global flags does first:
  refuse stray arguments, and keep orbax's per-save INFO logs out unless
  --verbosity asks for them."""
  from absl import app
  from absl import logging

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def user_errors() -> tuple[type[Exception], ...]:
  """The exceptions whose message says what to fix: a program prints them as
  one `prog: error: ...` line. Imported here, not at the top, so that --help
  and flag errors stay fast."""
  from cifar_jax import checkpoint
  from cifar_jax import distributed
  from cifar_jax import input_pipeline
  from cifar_jax import metrics
  from cifar_jax import workdir

  return (
    input_pipeline.DatasetNotFoundError,
    checkpoint.CheckpointMismatchError,
    checkpoint.NoCheckpointError,
    metrics.NonFiniteLossError,
    workdir.WorkdirBusyError,
    distributed.DistributedError,
    ValueError,
  )


def config_or_exit(prog: str):
  """`FLAGS.config`, or one line when its file cannot be loaded (config_flags
  then hands out a stand-in that raises OSError, with a long story, on first
  use)."""
  config = flags.FLAGS.config
  try:
    config.keys()  # a file that failed to load is a stand-in that raises here
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    sys.exit(
      f"{prog}: error: cannot load the --config file: {reason}. Pass a path such "
      "as configs/resnet18.py."
    )
  return config
