"""The command line: flags, overrides, train then eval, and clear failures."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from conftest import REPO_ROOT
from conftest import SHARED_DATA

from cifar_jax import main as main_lib


def run_cli(*args):
  """Runs the entry point in-process (so tfds mock data applies). config_flags
  reads `--config.*` overrides from sys.argv, so that is set too."""
  argv = ["cifar_jax"] + list(args)
  saved_argv, sys.argv = sys.argv, argv
  try:
    main_lib.FLAGS.unparse_flags()
    main_lib.main(main_lib.parse_flags(argv))
  finally:
    sys.argv = saved_argv
    for name in [n for n in main_lib.FLAGS if n.startswith("config.")]:
      delattr(main_lib.FLAGS, name)  # overrides are defined anew by each parse


def run_subprocess(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
    [sys.executable, "-m", "cifar_jax.main", *args],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_train_then_eval_on_mock_data(tmp_path, compile_cache, capsys):
  common = [
    "--config=configs/lenet5.py",
    f"--workdir={tmp_path}",
    "--config.num_epochs=1",
    "--config.batch_size=16",
    "--config.eval_batch_size=16",
    f"--config.compilation_cache_dir={compile_cache}",
    "--config.dataset.eval_split=train[45000:]",
  ]
  with tfds.testing.mock_data(num_examples=40):
    run_cli(*common)
    run_cli(*common, "--mode=eval")
  assert "accuracy:" in capsys.readouterr().out
  result = json.loads((tmp_path / "eval_train_45000.json").read_text())
  assert result["num_examples"] == 40 and result["split"] == "train[45000:]"
  assert result["step"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 16


def test_misspelt_config_key_fails_with_a_hint(tmp_path):
  result = run_subprocess(
    "--config=configs/lenet5.py", f"--workdir={tmp_path}", "--config.num_epoch=3"
  )
  assert result.returncode != 0
  assert 'Did you mean "num_epochs"' in result.stderr
  assert "Traceback" not in result.stderr


def test_unknown_model_and_missing_checkpoint_fail_clearly(tmp_path):
  with pytest.raises(SystemExit, match="Unknown model.name 'resnet19'.*resnet18"):
    run_cli("--config=configs/resnet18.py", f"--workdir={tmp_path}", "--config.model.name=resnet19")
  with pytest.raises(SystemExit, match="No checkpoint"):
    run_cli("--config=configs/lenet5.py", f"--workdir={tmp_path}", "--mode=eval")


@pytest.mark.real_data
@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/tensorflow_datasets absent")
def test_real_data_smoke(tmp_path, compile_cache):
  """The README's commands on the real CIFAR-10 files, with a tiny budget."""
  common = [
    "--config=configs/lenet5.py",
    f"--workdir={tmp_path}",
    f"--config.dataset.data_dir={SHARED_DATA}",
    "--config.dataset.train_split=train[:2048]",
    "--config.dataset.eval_split=train[45000:45500]",
    f"--config.compilation_cache_dir={compile_cache}",
  ]
  trained = run_subprocess(*common, "--config.num_epochs=2")
  assert trained.returncode == 0, trained.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  evaluated = run_subprocess(*common, "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert "read only" not in evaluated.stderr  # orbax's warnings about read-only folders
  result = json.loads((tmp_path / "eval_train_45000_45500.json").read_text())
  assert result["num_examples"] == 500
  assert result["accuracy"] == pytest.approx(records[-1]["eval_accuracy"])
  assert result["accuracy"] > 0.15  # above chance after 2 short epochs on real images


def test_missing_config_file_is_one_line(tmp_path):
  result = run_subprocess("--config=configs/no_such_model.py", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
    "cifar_jax: error: cannot load the --config file: [Errno 2] No such file or "
    "directory: 'configs/no_such_model.py'. Pass a path such as configs/resnet18.py."
  ]


def test_second_ctrl_c_is_one_line(tmp_path, monkeypatch):
  from cifar_jax import train

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # what the second Ctrl-C raises, wherever it lands

  monkeypatch.setattr(train, "train_and_evaluate", interrupted)
  with pytest.raises(SystemExit, match="interrupted. The workdir keeps its last complete"):
    run_cli("--config=configs/lenet5.py", f"--workdir={tmp_path}")


def test_a_stopped_run_exits_75_so_scripts_do_not_take_it_as_finished(tmp_path, monkeypatch):
  from cifar_jax import train

  def stopped(config, workdir, **kwargs):  # Ctrl-C or SIGTERM, its checkpoint saved
    raise train.TrainingStopped(7, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", stopped)
  with pytest.raises(SystemExit) as e:
    run_cli("--config=configs/lenet5.py", f"--workdir={tmp_path}")
  assert e.value.code == 75


@pytest.mark.real_data
@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/tensorflow_datasets absent")
def test_empty_split_names_its_key(tmp_path):
  from cifar_jax import input_pipeline

  with pytest.raises(
    input_pipeline.EmptySplitError,
    match=r"config.dataset.train_split='train\[:0\]' selects no examples "
    r"of cifar10 \(train: 50000\)",
  ):
    input_pipeline.load_split("cifar10", "train[:0]", SHARED_DATA, key="dataset.train_split")
