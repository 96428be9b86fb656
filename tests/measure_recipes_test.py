"""scripts/measure_recipes.sh: what it runs for each recipe, in order, with
`python` stubbed so that no training happens."""

import os
import shutil
import stat
import subprocess

from conftest import REPO_ROOT

STUB = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  *--mode=eval*) [ -n "$FAIL_EVAL" ] && exit 3 ;;
  *cifar_jax.main*) [ -n "$STOP_TRAIN" ] && exit 75 ;;  # Ctrl-C / SIGTERM
esac
exit 0
"""


def _run(tmp_path, *args, **env):
  (tmp_path / "scripts").mkdir(exist_ok=True)
  script = tmp_path / "scripts" / "measure_recipes.sh"
  shutil.copy(os.path.join(REPO_ROOT, "scripts", "measure_recipes.sh"), script)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "python").write_text(STUB)
  (bin_dir / "python").chmod(stat.S_IRWXU)
  calls = tmp_path / "calls.txt"
  result = subprocess.run(
    ["bash", str(script), *args],
    env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(calls), **env),
    capture_output=True,
    text=True,
  )
  return result.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_each_recipe_trains_evaluates_and_keeps_its_records_in_the_zoo_report(tmp_path):
  rc, calls = _run(tmp_path, "lenet5", "resnet18:budget", "--", "--config.seed=1", DATA_DIR="data")
  assert rc == 0
  flags = "--config.dataset.data_dir=data --config.seed=1"
  main = "-m cifar_jax.main --config=configs"
  keep = "-m cifar_jax.report --out=docs/zoo --keep_records=docs/zoo/records"
  train5 = f"{main}/lenet5.py --workdir=runs/recipe_lenet5 {flags}"
  train18 = f"{main}/resnet18.py:budget --workdir=runs/recipe_resnet18_budget {flags}"
  assert calls == [
    train5,
    f"{train5} --mode=eval",
    f"{keep} runs/recipe_lenet5",
    train18,
    f"{train18} --mode=eval",
    f"{keep} runs/recipe_resnet18_budget",
  ]


def test_a_failed_step_stops_before_keeping_anything(tmp_path):
  rc, calls = _run(tmp_path, "lenet5", "my_cnn", REPORT_DIR="out", FAIL_EVAL="1")
  assert rc == 3
  assert calls == [
    "-m cifar_jax.main --config=configs/lenet5.py --workdir=runs/recipe_lenet5",
    "-m cifar_jax.main --config=configs/lenet5.py --workdir=runs/recipe_lenet5 --mode=eval",
  ]


def test_a_stopped_training_run_is_neither_evaluated_nor_kept(tmp_path):
  rc, calls = _run(tmp_path, "resnet18:budget", "lenet5", STOP_TRAIN="1")
  assert rc == 75  # the same command resumes it
  assert calls == [
    "-m cifar_jax.main --config=configs/resnet18.py:budget --workdir=runs/recipe_resnet18_budget"
  ]
