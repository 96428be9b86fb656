"""`python -m cifar_jax.search`: its help, and a package cheap enough to
import that the huge-page re-execution comes before jax."""

import subprocess
import sys

from conftest import REPO_ROOT


def _run(*args, timeout=120):
  return subprocess.run(
    [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_help_says_what_the_search_writes_and_names_the_flags():
  result = _run("-m", "cifar_jax.search", "--help")
  assert "search_state.json" in result.stdout and "best_config.py" in result.stdout
  assert "--workdir" in result.stdout and "--config" in result.stdout
  missing = _run("-m", "cifar_jax.search", "--config=configs/search_resnet_budget.py")
  assert missing.returncode != 0
  assert "cifar_jax.search: error: flag --workdir" in missing.stderr
  assert "Traceback" not in missing.stderr


def test_importing_the_package_imports_no_jax_and_the_driver_no_ray_or_matplotlib():
  code = (
    "import sys\n"
    "import cifar_jax.search\n"
    "assert 'jax' not in sys.modules, 'the package imported jax'\n"
    "from cifar_jax.search import driver\n"
    "assert 'jax' in sys.modules\n"
    "assert 'ray' not in sys.modules and 'matplotlib' not in sys.modules\n"
  )
  result = _run("-c", code)
  assert result.returncode == 0, result.stderr[-2000:]


def test_an_interrupted_search_exits_75_with_one_line(tmp_path):
  """A trial stopped by Ctrl-C or SIGTERM: the same status as a stopped
  `python -m cifar_jax.main`, so scripts tell it from a finished search."""
  code = (
    "import runpy, sys\n"
    "from cifar_jax import search\n"
    "def interrupted(config, workdir):\n"
    "  raise search.SearchInterrupted('trial t0 was interrupted; run the same command again')\n"
    "search.run_search = interrupted\n"
    "sys.argv = ['cifar_jax.search', '--config=configs/search_resnet_budget.py',\n"
    f"            '--workdir={tmp_path}']\n"
    "runpy.run_module('cifar_jax.search', run_name='__main__', alter_sys=True)\n"
  )
  result = _run("-c", code)
  assert result.returncode == 75, result.stderr[-2000:]
  assert "cifar_jax.search: trial t0 was interrupted" in result.stderr
  assert "Traceback" not in result.stderr
