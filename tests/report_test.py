"""The report (cifar_jax.report) on tiny runs, TensorBoard events and the
no-wandb fallback.

Two tiny lenet5 runs are trained once for the module: "evaluated" (then
`evaluate`d) and "unevaluated" (trained with config.wandb.project set while
`import wandb` fails); a third workdir only has a config.json, like a run
that is still starting. The runs are shared by the tests of every part of the
report (runs, figures, markdown, write, the command line), hence one file.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from conftest import make_split
from conftest import make_tiny_config

from cifar_jax import evaluate
from cifar_jax import report
from cifar_jax import train
from cifar_jax.report import __main__ as report_main
from cifar_jax.report import figures
from cifar_jax.report import write


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compile_cache):
  root = tmp_path_factory.mktemp("runs")
  train_split, eval_split = make_split(96, learnable=True), make_split(40, seed=1)
  config = make_tiny_config(compile_cache)
  train.train_and_evaluate(
    config, root / "evaluated", train_split=train_split, eval_split=eval_split
  )
  evaluate.evaluate(config, root / "evaluated", split=eval_split)
  config = make_tiny_config(compile_cache)
  config.wandb.project = "cifar_jax_test"
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    train.train_and_evaluate(
      config, root / "unevaluated", train_split=train_split, eval_split=eval_split
    )
  (root / "starting").mkdir()
  shutil.copy(root / "evaluated" / "config.json", root / "starting" / "config.json")
  return root


def run_report(*args):
  """`python -m cifar_jax.report ARGS`, in-process."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JAX_PLATFORMS", "cpu")  # main() sets it; not for the later tests
    return report_main.main(list(args))


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
  out = tmp_path_factory.mktemp("report")
  workdirs = [runs / "evaluated", runs / "unevaluated", runs / "starting"]
  assert run_report("--out", str(out), *map(str, workdirs)) == 0
  return out


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _sections(markdown):
  """{run heading: {first table column: second column}}."""
  sections = {}
  for block in re.split(r"^## ", markdown, flags=re.M)[1:]:
    heading, _, body = block.partition("\n")
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", body, flags=re.M)
    sections[heading.strip()] = {k: v for k, v in rows if k.strip() and set(k) != {"-"}}
  return sections


def _number(text):
  return float(re.match(r"[\d,.]+", text).group().replace(",", ""))


def test_report_writes_every_file(written):
  expected = [
    "report.md",
    "curves.png",
    "per_class.png",
    "accuracy_vs_params.png",
    "confusion_evaluated.png",
    "mistakes_evaluated.png",
  ]
  for name in expected:
    assert (written / name).stat().st_size > 0, name
  assert sorted(p.name for p in written.iterdir()) == sorted(expected)
  for name in expected[1:]:  # real PNGs that embed in report.md
    assert (written / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({name})" in (written / "report.md").read_text()


def test_report_numbers_match_the_runs(runs, written):
  sections = _sections((written / "report.md").read_text())
  assert set(sections) == {"evaluated (lenet5)", "unevaluated (lenet5)", "starting (lenet5)"}
  result = json.loads((runs / "evaluated" / "eval_train_45000.json").read_text())
  for name in ("evaluated", "unevaluated"):
    table, records = sections[f"{name} (lenet5)"], _records(runs / name)
    assert table["Epochs"] == "2 / 2"
    assert _number(table["Parameters"]) == result["param_count"] == 62006
    assert table["FLOPs (forward, 1 image)"].endswith("MFLOPs")
    accs = [r["eval_accuracy"] for r in records]
    # The eval split is a train slice: it must be called validation.
    best = table["Best validation accuracy on `train[45000:]`"]
    final = table["Final validation accuracy on `train[45000:]`"]
    assert _number(best) == pytest.approx(round(100 * max(accs), 2))
    assert f"(epoch {1 + int(np.argmax(accs))})" in best
    assert _number(final) == pytest.approx(round(100 * accs[-1], 2))
    time = table["Train time (sum of epoch times)"]
    assert _number(time) == pytest.approx(round(sum(r["epoch_time_s"] for r in records), 1))
    assert _number(table["Throughput (mean train img/s)"]) == pytest.approx(
      round(np.mean([r["train_img_per_s"] for r in records]))
    )
  eval_row = sections["evaluated (lenet5)"]["`--mode=eval` validation accuracy on `train[45000:]`"]
  assert _number(eval_row) == pytest.approx(round(100 * result["accuracy"], 2))
  assert "on 40 examples" in eval_row
  assert not any("--mode=eval" in k for k in sections["unevaluated (lenet5)"])
  markdown = (written / "report.md").read_text()
  assert "**validation** accuracies" in markdown


def test_report_says_what_each_run_lacks(written):
  markdown = (written / "report.md").read_text()
  unevaluated = markdown.split("## unevaluated")[1].split("## ")[0]
  assert "no evaluation yet: run `python -m cifar_jax.main" in unevaluated
  assert "--mode=eval" in unevaluated
  starting = markdown.split("## starting")[1]
  assert "no metrics yet" in starting
  assert "| Epochs | 0 / 2 |" in starting
  assert "no evaluation yet" in starting
  evaluated = markdown.split("## evaluated")[1].split("## ")[0]
  assert "- **" not in evaluated  # complete: no notes


def test_missing_and_partial_workdirs_do_not_crash(runs, tmp_path):
  partial = tmp_path / "partial"
  partial.mkdir()
  lines = (runs / "evaluated" / "metrics.jsonl").read_text().splitlines()
  (partial / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # being written
  shutil.copy(runs / "evaluated" / "eval_train_45000.json", partial)  # no config.json
  run = report.load_run(partial)
  assert [r["epoch"] for r in run.metrics] == [1]
  assert run.model == "lenet5" and run.primary_eval["accuracy"] >= 0
  assert any("config.json" in note for note in run.notes)
  written = report.write_report(
    [partial, tmp_path / "absent", partial], tmp_path / "out", flops=False
  )
  names = sorted(p.name for p in written)
  # The same basename twice gets two file names.
  assert names == sorted(
    [
      "curves.png",
      "per_class.png",
      "accuracy_vs_params.png",
      "confusion_partial.png",
      "confusion_partial_2.png",
      "report.md",
    ]
  )
  markdown = (tmp_path / "out" / "report.md").read_text()
  assert "does not exist" in markdown and "FLOPs (forward, 1 image) | n/a" in markdown
  written = report.write_report([tmp_path / "absent"], tmp_path / "empty")
  assert [p.name for p in written] == ["report.md"]
  assert "No training curves plot" in (tmp_path / "empty" / "report.md").read_text()


def test_a_malformed_metrics_line_is_noted_unless_it_is_the_last(runs, tmp_path):
  lines = (runs / "evaluated" / "metrics.jsonl").read_text().splitlines()
  torn = lines[1][:20]  # the last line, being written
  (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", lines[1], torn]))
  run = report.load_run(tmp_path)
  assert [r["epoch"] for r in run.metrics] == [1, 2]
  assert [n for n in run.notes if n.startswith("skipped")] == [
    "skipped a malformed line 2 of `metrics.jsonl`"
  ]


def test_kept_records_outlive_their_workdirs(runs, tmp_path):
  """--keep_records copies the record files only, and a report over the
  archive after the workdirs are gone says what one over the workdirs said."""
  live = tmp_path / "live"
  shutil.copytree(runs, live)
  archive, out = tmp_path / "archive", tmp_path / "out"
  workdirs = [live / "evaluated", live / "unevaluated"]
  assert (
    run_report("--noflops", f"--out={out}", f"--keep_records={archive}", *map(str, workdirs)) == 0
  )
  kept = sorted(p.name for p in (archive / "evaluated").iterdir())
  assert kept == [
    "config.json",
    "eval_train_45000.json",
    "eval_train_45000_mistakes.npz",
    "metrics.jsonl",
  ]  # no checkpoints, best/ or tensorboard/
  assert (live / "evaluated" / "checkpoints").is_dir()
  before = (out / "report.md").read_text()
  shutil.rmtree(live)
  assert run_report("--noflops", f"--out={out}", f"--keep_records={archive}") == 0
  after = (out / "report.md").read_text()
  assert after == before
  assert set(_sections(after)) == {"evaluated (lenet5)", "unevaluated (lenet5)"}
  assert (out / "mistakes_evaluated.png").stat().st_size > 0


def test_a_kept_run_is_replaced_only_by_one_with_as_many_epochs(runs, tmp_path):
  archive = tmp_path / "archive"
  kept, notes = report.keep_records([runs / "evaluated"], archive)
  assert kept == [archive / "evaluated"] and notes == []
  restarted = tmp_path / "restart" / "evaluated"  # the same name, one epoch so far
  restarted.mkdir(parents=True)
  shutil.copy(runs / "evaluated" / "config.json", restarted)
  first = (runs / "evaluated" / "metrics.jsonl").read_text().splitlines()[0]
  (restarted / "metrics.jsonl").write_text(first + "\n")
  kept, notes = report.keep_records([restarted, tmp_path / "not_a_run"], archive)
  assert kept == [archive / "evaluated"]
  assert len(_records(archive / "evaluated")) == 2  # the finished run's records stay
  assert "fewer epoch records than its kept copy" in notes[0]
  assert "not_a_run" in notes[1] and "no config.json" in notes[1]
  (restarted / "metrics.jsonl").write_text((runs / "evaluated" / "metrics.jsonl").read_text())
  kept, notes = report.keep_records([restarted], archive)
  assert notes == [] and sorted(p.name for p in (archive / "evaluated").iterdir()) == [
    "config.json",
    "metrics.jsonl",
  ]  # replaced whole: the restarted run has no evaluation yet
  assert [p.name for p in archive.iterdir()] == ["evaluated"]  # nothing left aside


def test_keeping_two_workdirs_of_one_name_fails_before_copying(runs, tmp_path):
  other = tmp_path / "b" / "evaluated"
  shutil.copytree(runs / "evaluated", other)
  with pytest.raises(SystemExit) as e:
    run_report(
      f"--out={tmp_path / 'out'}",
      f"--keep_records={tmp_path / 'kept'}",
      str(runs / "evaluated"),
      str(other),
    )
  assert "share the name evaluated" in e.value.code and "\n" not in e.value.code
  assert not (tmp_path / "kept").exists()


def test_confusion_image_is_rgb_uint8():
  result = {
    "accuracy": 0.5,
    "step": 3,
    "split": "test",
    "model": "lenet5",
    "class_names": ["a", "b"],
    "confusion_matrix": [[3, 1], [2, 2]],
  }
  image = figures.confusion_image(result)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert image.min() < 100 < 200 < image.max()  # drawn, not blank


@pytest.mark.parametrize(
  "args, workdirs, flops",
  [
    (["--out=o", "a", "b"], ["a", "b"], True),
    (["--workdirs=a,b", "--out=o"], ["a", "b"], True),
    (["--workdirs", "a", "b", "--out", "o"], ["a", "b"], True),  # the argparse version's form
    (["--workdirs=a", "--out=o", "b"], ["a", "b"], True),
    (["--noflops", "--out=o", "a"], ["a"], False),
  ],
)
def test_command_line_takes_workdirs_after_the_flags_or_as_a_list(
  monkeypatch, args, workdirs, flops
):
  calls = []
  monkeypatch.setattr(write, "write_report", lambda *a, **k: calls.append((a, k)) or [])
  assert run_report(*args) == 0
  assert calls == [((workdirs, "o"), {"flops": flops})]


def test_command_line_with_a_workdir_list_and_no_flops(runs, tmp_path):
  workdirs = f"--workdirs={runs / 'evaluated'},{runs / 'unevaluated'}"
  assert run_report(workdirs, "--noflops", f"--out={tmp_path}") == 0
  assert (tmp_path / "confusion_evaluated.png").stat().st_size > 0
  sections = _sections((tmp_path / "report.md").read_text())
  assert set(sections) == {"evaluated (lenet5)", "unevaluated (lenet5)"}
  assert all(t["FLOPs (forward, 1 image)"] == "n/a" for t in sections.values())
  assert _number(sections["evaluated (lenet5)"]["Parameters"]) == 62006  # the eval file's


def test_command_line_errors_say_what_is_missing(tmp_path):
  with pytest.raises(SystemExit) as e:
    run_report(f"--out={tmp_path}")
  assert e.value.code.startswith("cifar_jax.report: error: no workdirs: pass them after")
  assert "\n" not in e.value.code
  with pytest.raises(SystemExit) as e:
    run_report(str(tmp_path))
  assert e.value.code.startswith("cifar_jax.report: error: flag --out=None")
  with pytest.raises(SystemExit) as e:
    run_report("--no-flops", f"--out={tmp_path}", str(tmp_path))
  assert "Unknown command line flag 'no-flops'" in e.value.code
  assert not list(tmp_path.iterdir())  # nothing written


def test_help_shows_the_usage_and_the_flags():
  result = subprocess.run(
    [sys.executable, "-m", "cifar_jax.report", "--help"],
    cwd=REPO_ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert "python -m cifar_jax.report --out=reports/cmp runs/lenet5 runs/r18" in result.stdout
  for flag in ("--workdirs", "--out", "--[no]flops", "--keep_records"):
    assert flag in result.stdout


def _summaries(workdir):
  """(tag, step, value) of every summary in workdir/tensorboard, read as
  TensorBoard reads them; a scalar's value is a float, an image's the
  (width, height, PNG bytes) that tf.summary.image stores."""
  import tensorflow as tf

  out = []
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        out.append((value.tag, event.step, tf.make_ndarray(value.tensor)))
  return out


def test_tensorboard_has_the_epoch_scalars_and_the_confusion_image(runs):
  for name in ("evaluated", "unevaluated"):
    scalars = {}
    for tag, step, value in _summaries(runs / name):
      if value.ndim == 0:
        scalars.setdefault(tag, []).append((step, float(value)))
    records = _records(runs / name)
    for key in (
      "train_loss",
      "train_accuracy",
      "eval_loss",
      "eval_accuracy",
      "learning_rate",
      "epoch_time_s",
      "train_img_per_s",
    ):
      expected = [(r["step"], r[key]) for r in records]
      assert [s for s, _ in scalars[key]] == [s for s, _ in expected], key
      np.testing.assert_allclose([v for _, v in scalars[key]], [v for _, v in expected], rtol=1e-6)
  images = [
    (step, value)
    for tag, step, value in _summaries(runs / "evaluated")
    if tag == "eval/confusion_matrix"
  ]
  assert len(images) == 1
  step, (width, height, png) = images[0]
  result = json.loads((runs / "evaluated" / "eval_train_45000.json").read_text())
  assert step == result["step"]  # of the best checkpoint, the one evaluated
  assert int(width) > 300 and int(height) > 300
  assert png[:4] == b"\x89PNG"


def test_training_works_without_wandb_installed(runs):
  # Trained with config.wandb.project set and `import wandb` failing.
  config = json.loads((runs / "unevaluated" / "config.json").read_text())
  assert config["wandb"]["project"] == "cifar_jax_test"
  assert len(_records(runs / "unevaluated")) == 2
  assert not (runs / "unevaluated" / "wandb").exists()
  assert all(math.isfinite(r["train_loss"]) for r in _records(runs / "unevaluated"))
