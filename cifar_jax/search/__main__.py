"""The search's command line: `python -m cifar_jax.search --config=... --workdir=...`.

Only ever run as a program, so its flags are defined at import.
"""

from __future__ import annotations

import sys

from cifar_jax import cli

cli.start_program()  # first: it may re-execute the process

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cifar_jax import search  # noqa: E402  (cheap: its names load on first use)

PROG = "cifar_jax.search"
__doc__ = search.__doc__  # what --help prints: what the search does and writes

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory of the search (trials, results, best config).")
config_flags.DEFINE_config_file(
  "config", None, "A search config, e.g. configs/search_resnet_budget.py.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.start_main(argv)
  known_errors = cli.user_errors()
  try:
    search.run_search(cli.config_or_exit(PROG), FLAGS.workdir)
  except search.SearchInterrupted as e:  # resumable: the status says "try again"
    from cifar_jax import train  # loaded by now; not before, to keep --help fast

    print(f"{PROG}: {e}", file=sys.stderr)
    sys.exit(train.TrainingStopped.EXIT_CODE)  # as `python -m cifar_jax.main`
  except known_errors as e:
    sys.exit(f"{PROG}: error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(PROG))
