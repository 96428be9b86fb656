"""Tests of cifar_jax.predict (and Checkpointer.restore of a given step): a tiny
lenet5 run is trained once, then classifies PNG and JPEG files through `main`."""

import csv
import json

import jax
import numpy as np
import pytest
from conftest import make_split
from conftest import make_tiny_config
from PIL import Image

from cifar_jax import checkpoint
from cifar_jax import input_pipeline
from cifar_jax import parallel
from cifar_jax import precision
from cifar_jax import predict
from cifar_jax import run as run_lib
from cifar_jax import train

CLASSES = input_pipeline.CIFAR10_CLASSES


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, compile_cache):
  """lenet5 trained 2 epochs of one step each: checkpoints of steps 1 and 2."""
  config = make_tiny_config(compile_cache)
  config.num_epochs = 2
  path = tmp_path_factory.mktemp("lenet5")
  train.train_and_evaluate(
    config,
    path,
    train_split=make_split(32, learnable=True),
    eval_split=make_split(32, seed=1, learnable=True),
  )
  return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A folder of images in several modes and sizes, one unreadable file and a
  file of another kind that the folder search must not pick up."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  (folder / "sub").mkdir()
  Image.fromarray(rng.integers(0, 256, (48, 64, 4), np.uint8), "RGBA").save(folder / "a.png")
  Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8), "L").save(folder / "sub" / "b.JPG")
  Image.fromarray(rng.integers(0, 256, (20, 100, 3), np.uint8)).save(folder / "c.jpeg")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but no image")
  (folder / "notes.txt").write_text("not an image")
  return folder


READABLE = ("a.png", "c.jpeg", "sub/b.JPG")  # in the order of the sorted search


def run_main(argv, capsys):
  assert predict.main([str(a) for a in argv]) == 0
  return capsys.readouterr()


def fail_main(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    predict.main([str(a) for a in argv])
  message = str(e.value.code)
  assert message.startswith("cifar_jax.predict: error: ") and "\n" not in message
  return message


def test_read_image_converts_any_png_or_jpeg_to_32x32_rgb(tmp_path):
  transparent = np.zeros((48, 64, 4), np.uint8)  # fully transparent: white background
  Image.fromarray(transparent, "RGBA").save(tmp_path / "t.png")
  gray = np.full((10, 70), 77, np.uint8)  # upscaled, squeezed to a square
  Image.fromarray(gray, "L").save(tmp_path / "g.jpg", quality=100)
  colour = np.zeros((300, 200, 3), np.uint8)
  colour[..., 0] = 200
  Image.fromarray(colour).save(tmp_path / "c.png")
  for name, expected in (
    ("t.png", (255, 255, 255)),
    ("g.jpg", (77, 77, 77)),
    ("c.png", (200, 0, 0)),
  ):
    image = predict.read_image(tmp_path / name)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image.reshape(-1, 3), np.broadcast_to(expected, (1024, 3)), atol=1)


def test_predicts_a_folder_to_jsonl_best_first_and_skips_the_unreadable(
  workdir, images, tmp_path, capsys
):
  out = tmp_path / "preds.jsonl"
  # Batches of 2 for 4 files: a full batch and a padded one.
  captured = run_main(
    ["--workdir", workdir, "--top_k=4", "--batch_size=2", "--output", out, images], capsys
  )
  assert "cannot read" in captured.err and "broken.png" in captured.err
  assert "lenet5 step " in captured.err
  lines = out.read_text().splitlines()
  assert [json.loads(line)["file"] for line in lines] == [str(images / f) for f in READABLE]
  printed = captured.out.splitlines()
  assert [p.split(":")[0] for p in printed] == [str(images / f) for f in READABLE]

  trained = predict.load_trained(workdir)
  expected = np.asarray(
    jax.jit(predict.probabilities_fn(trained.model))(
      trained.variables, np.stack([predict.read_image(images / f) for f in READABLE])
    )
  )
  for line, probs in zip(lines, expected):
    row = json.loads(line)
    assert set(row) == {"file", "predictions"}
    assert len(row["predictions"]) == 4
    assert all(set(p) == {"class", "probability"} for p in row["predictions"])
    best = np.argsort(-probs, kind="stable")[:4]
    assert [p["class"] for p in row["predictions"]] == [CLASSES[i] for i in best]
    got = [p["probability"] for p in row["predictions"]]
    assert got == sorted(got, reverse=True)
    np.testing.assert_allclose(got, probs[best], rtol=1e-5)
  assert printed[0].endswith(
    ", ".join(
      f"{CLASSES[i]} {expected[0][i]:.3f}" for i in np.argsort(-expected[0], kind="stable")[:4]
    )
  )


def test_csv_output_holds_the_same_predictions_flattened(workdir, images, tmp_path, capsys):
  jsonl, table = tmp_path / "p.jsonl", tmp_path / "p.csv"
  files = [images / "a.png", images / "sub" / "b.JPG"]
  run_main(["--workdir", workdir, "--output", jsonl, *files], capsys)
  run_main(["--workdir", workdir, "--output", table, *files], capsys)
  with open(table, newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["file", "rank", "class", "probability"]
  expected = [
    [row["file"], str(rank), p["class"], p["probability"]]
    for row in map(json.loads, jsonl.read_text().splitlines())
    for rank, p in enumerate(row["predictions"], 1)
  ]
  assert len(rows) == 1 + 2 * 3  # the default top_k is 3
  for got, want in zip(rows[1:], expected):
    assert got[:3] == want[:3]
    assert float(got[3]) == pytest.approx(want[3], rel=1e-6)


def test_step_chooses_the_checkpoint(workdir, images, tmp_path, capsys):
  outputs = {}
  for step in (1, 2):
    out = tmp_path / f"step{step}.jsonl"
    captured = run_main(
      [
        "--workdir",
        workdir,
        f"--step={step}",
        "--output",
        out,
        "--config",
        workdir / "config.json",
        images / "a.png",
      ],
      capsys,
    )
    assert f"lenet5 step {step} " in captured.err
    outputs[step] = json.loads(out.read_text())["predictions"]
  assert outputs[1] != outputs[2]
  message = fail_main(["--workdir", workdir, "--step=7", images / "a.png"], capsys)
  assert "no readable checkpoint of step 7" in message and "steps 1, 2" in message


def test_checkpointer_restores_a_given_step(workdir):
  config = predict.load_config(workdir)
  template = run_lib.build_run(
    config, layout=run_lib.Layout(parallel.DataParallel("jit", 1), precision.XLA_FORM)
  ).state
  ckpt = checkpoint.Checkpointer(workdir, keep_best=True, read_only=True)
  try:
    assert ckpt.saved_steps() == [1, 2]
    for step in (2, 1, np.int64(2)):
      state, meta = ckpt.restore(template, step)
      assert meta["step"] == int(step) == int(state.step)
    assert ckpt.restore(template, 3) is None
  finally:
    ckpt.close()


def test_no_readable_image_fails(workdir, images, capsys):
  message = fail_main(["--workdir", workdir, images / "broken.png"], capsys)
  assert "none of the 1 file(s) could be read" in message
  assert "broken.png" in capsys.readouterr().err  # the warning says which and why


def test_empty_folder_fails_in_one_line(workdir, tmp_path, capsys):
  (tmp_path / "empty" / "deeper").mkdir(parents=True)
  (tmp_path / "empty" / "deeper" / "x.txt").write_text("")
  message = fail_main(["--workdir", workdir, tmp_path / "empty"], capsys)
  assert "holds no .png, .jpg or .jpeg file" in message


def test_workdir_without_a_checkpoint_says_train_first(tmp_path, images, capsys):
  message = fail_main(["--workdir", tmp_path / "fresh", images / "a.png"], capsys)
  assert "No checkpoint in" in message and "train first" in message


def test_output_must_be_jsonl_or_csv(workdir, images, tmp_path, capsys):
  message = fail_main(["--workdir", workdir, "--output", tmp_path / "p.txt", images], capsys)
  assert ".jsonl or .csv" in message
