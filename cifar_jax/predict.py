"""Classifies image files with a trained run; loads a trained model for export.

    python -m cifar_jax.predict --workdir=runs/r18 photo.jpg pictures/
    python -m cifar_jax.predict --workdir=runs/r18 --top_k=5 --output=preds.jsonl pictures/

The workdir's own config.json names the model (`--config=FILE.json` or
`--config=FILE.py[:variant]` overrides it); the weights are those of its best
checkpoint, else the latest (`--step=N`: that step's). A run trained with
`ema_decay` predicts with its EMA weights, as its `ema_eval_*` metrics did;
test-time augmentation is the config's `tta` (`--tta` overrides it). The model
is the float32 XLA form of the run's (`run.create_model`'s default), whatever
dtype and convolutions it trained with, so predictions do not depend on the
machine's oneDNN or bf16 support.

Images: folders are searched recursively for *.png, *.jpg and *.jpeg (any
case); files named on the command line are read whatever their extension.
Each is read with Pillow: EXIF orientation applied, transparency composited
onto white, converted to RGB (grayscale becomes three equal channels), then
resized to 32x32 with Pillow's bicubic filter, which antialiases when it
shrinks (the whole image is squeezed to a square: the aspect ratio is not
kept, nothing is cropped). A file that cannot be read is skipped with a
warning; the others are still classified.

Prints one line per image, `FILE: class probability, ...`, best first, and
with `--output` writes the same as JSON lines (`{"file": FILE, "predictions":
[{"class": NAME, "probability": P}, ...]}`, one per image) or CSV (header
`file,rank,class,probability`, one row per prediction, rank 1 the best).

`load_trained` (the model, the weights, the step) and `probabilities_fn` (uint8
images -> class probabilities) are also what cifar_jax.export serialises.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Iterator
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from cifar_jax import augment
from cifar_jax import checkpoint
from cifar_jax import cli
from cifar_jax import input_pipeline
from cifar_jax import parallel as parallel_lib
from cifar_jax import precision
from cifar_jax import records
from cifar_jax import run as run_lib
from cifar_jax import steps

PROG = "cifar_jax.predict"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OUTPUT_SUFFIXES = (".jsonl", ".csv")
# Where an image has transparency, it is composited onto this colour.
BACKGROUND = (255, 255, 255)


class PredictError(ValueError):
  """A problem with what predict or export was asked to do; the message says
  what to change."""


# What loading a trained workdir may raise with a message saying what to fix:
# predict and export print these as one `prog: error: ...` line.
USER_ERRORS = (PredictError, checkpoint.NoCheckpointError, checkpoint.CheckpointMismatchError)


# ---- the trained model ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Trained:
  """A run's model in its float32 XLA form with the weights of one checkpoint."""

  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]  # {"params", "batch_stats"}: the EMA ones when `weights` is "ema"
  weights: str  # "ema" or "params"
  step: int
  meta: dict[str, Any]  # the checkpoint's (model, options, metrics, ...)
  class_names: tuple[str, ...]

  @property
  def description(self) -> str:
    accuracy = (self.meta.get("metrics") or {}).get("eval_accuracy")
    scored = "" if accuracy is None else f", eval accuracy {float(accuracy):.4f}"
    weights = "EMA weights" if self.weights == "ema" else "non-EMA weights"
    return f"{self.config.model.name} step {self.step} ({weights}{scored})"


def load_config(workdir: str | Path, config_file: str | None = None) -> ml_collections.ConfigDict:
  """`config_file` (a .json config, or a config .py with an optional
  `:variant`), else the config.json the training run wrote into `workdir`."""
  if config_file:
    path, variant = config_file, ""
    if not Path(path).is_file() and ":" in path:
      path, variant = path.rsplit(":", 1)
    if not Path(path).is_file():
      raise PredictError(
        f"--config={config_file}: no such file; pass a workdir's "
        "config.json or a config file such as configs/resnet18.py."
      )
    if path.endswith(".json"):
      return _read_json_config(Path(path))
    spec = importlib.util.spec_from_file_location("_predict_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
  path = Path(workdir) / "config.json"
  if not path.is_file():
    if not _saved_steps(workdir):
      raise checkpoint.NoCheckpointError(no_checkpoint_message(workdir))
    raise PredictError(
      f"{path} is missing: pass --config=FILE with the config the run was trained with."
    )
  return _read_json_config(path)


def _read_json_config(path: Path) -> ml_collections.ConfigDict:
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise PredictError(
      f"cannot read the config {path} ({e}); pass --config=FILE "
      "with the config the run was trained with."
    ) from None


def no_checkpoint_message(workdir: str | Path) -> str:
  return (
    f"No checkpoint in {Path(workdir).absolute()}: train first with `python -m "
    f"cifar_jax.main --config=configs/<model>.py --workdir={workdir}`."
  )


def _saved_steps(workdir: str | Path) -> list[int]:
  ckpt = checkpoint.Checkpointer(workdir, keep_best=True, read_only=True)
  try:
    return ckpt.saved_steps()
  finally:
    ckpt.close()


def load_trained(
  workdir: str | Path,
  config: ml_collections.ConfigDict | None = None,
  *,
  step: int | None = None,
  which: str = "best_or_latest",
) -> Trained:
  """The model of `workdir`'s run (`config`, default its config.json) in its
  float32 XLA form, with the weights of checkpoint `which` (or of `step`):
  the averaged ones if it kept them (`ema_decay`, `lookahead`)."""
  workdir = Path(workdir)
  config = config if config is not None else load_config(workdir)
  # The XLA form on one device: the state's tree and shapes (all a template
  # needs) do not depend on the dtype, the convolutions or the layout the run
  # trained with, and the weights are float32 in every form.
  layout = run_lib.Layout(parallel_lib.DataParallel("jit", 1), precision.XLA_FORM)
  run = run_lib.build_run(config, layout=layout)
  ckpt = checkpoint.Checkpointer(
    workdir,
    keep_best=True,
    read_only=True,
    meta=run.meta,
    best_metric=records.best_metric(config),
  )
  try:
    restored = ckpt.restore(run.state, which if step is None else step)
    saved = ckpt.saved_steps()
  finally:
    ckpt.close()
  if restored is None:
    if step is not None and saved:
      raise PredictError(
        f"{workdir} has no readable checkpoint of step {step}; its "
        f"checkpoints are of steps {', '.join(map(str, saved))}: pass "
        "one of them to --step, or leave --step out for the best."
      )
    raise checkpoint.NoCheckpointError(no_checkpoint_message(workdir))
  state, meta = restored
  use_ema = records.averages_weights(config)
  variables = (
    dict(state.ema) if use_ema else {"params": state.params, "batch_stats": state.batch_stats}
  )
  return Trained(
    config=config,
    model=run.model,
    variables=variables,
    weights="ema" if use_ema else "params",
    step=int(meta.get("step", int(state.step))),
    meta=meta,
    class_names=class_names(config.dataset.num_classes),
  )


def class_names(num_classes: int) -> tuple[str, ...]:
  if num_classes == len(input_pipeline.CIFAR10_CLASSES):
    return input_pipeline.CIFAR10_CLASSES
  return tuple(f"class_{i}" for i in range(num_classes))


def probabilities_fn(model: nn.Module, tta: str = "none") -> Callable[[Any, jax.Array], jax.Array]:
  """fn(variables, uint8 images (N, 32, 32, 3)) -> float32 probabilities
  (N, num_classes), averaged over the `tta` views as `steps.eval_step` does."""
  if tta not in augment.TTA_MODES:
    raise PredictError(f"tta must be one of {', '.join(augment.TTA_MODES)}, not {tta!r}.")

  def fn(variables, images):
    views = augment.tta_views(steps.to_unit_float(images), tta)
    log_probs = [
      jax.nn.log_softmax(
        model.apply(variables, steps.normalize(v), train=False).astype(jnp.float32)
      )
      for v in views
    ]
    return jnp.exp(jax.nn.logsumexp(jnp.stack(log_probs), axis=0) - jnp.log(len(views)))

  return fn


# ---- the images -------------------------------------------------------------------
def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
  """The image files of `inputs` (files as given; folders searched
  recursively for IMAGE_SUFFIXES, sorted), and a warning per input that
  gave none (missing, or a folder without images)."""
  files: list[Path] = []
  problems: list[str] = []
  for item in map(Path, inputs):
    if item.is_dir():
      found = sorted(
        p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
      )
      if not found:
        problems.append(
          f"the folder {item} holds no .png, .jpg or .jpeg file (searched recursively)"
        )
      files += found
    elif item.is_file():
      files.append(item)
    else:
      problems.append(f"{item} does not exist")
  return list(dict.fromkeys(files)), problems  # each file once, in order


def read_image(path: str | Path) -> np.ndarray:
  """A file as a uint8 (32, 32, 3) RGB image (see the module docstring for how)."""
  from PIL import Image  # Pillow comes with matplotlib
  from PIL import ImageOps  # Pillow comes with matplotlib

  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)  # decodes the whole file: bad data fails here
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
      image = image.convert("RGBA")
      background = Image.new("RGBA", image.size, BACKGROUND + (255,))
      image = Image.alpha_composite(background, image)
    height, width = input_pipeline.IMAGE_SHAPE[:2]
    image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)


def _try_read(path: Path) -> tuple[np.ndarray | None, str | None]:
  try:
    return read_image(path), None
  # Pillow raises many kinds for a broken file (OSError for truncated data,
  # SyntaxError and ValueError from some decoders, DecompressionBombError).
  except Exception as e:  # noqa: BLE001
    reason = str(e).replace(f" {str(path)!r}", "").strip()  # the path is said once, by the caller
    return None, f"{type(e).__name__}: {reason}" if reason else type(e).__name__


# ---- prediction -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prediction:
  file: str
  predictions: list[dict[str, Any]] | None  # [{"class", "probability"}], best first
  error: str | None = None  # why the file could not be read (predictions None)


def predict_files(
  trained: Trained,
  files: Sequence[str | Path],
  *,
  top_k: int = 3,
  batch_size: int = 64,
  tta: str | None = None,
) -> Iterator[Prediction]:
  """A Prediction per file, in order, computed `batch_size` images at a time;
  an unreadable file gives one with its `error` instead."""
  fn = jax.jit(probabilities_fn(trained.model, trained.config.tta if tta is None else tta))
  # Every batch is padded to one size: one compilation.
  batch_size = max(1, min(batch_size, len(files)))
  top_k = max(1, min(top_k, len(trained.class_names)))
  for start in range(0, len(files), batch_size):
    chunk = [Path(f) for f in files[start : start + batch_size]]
    images, errors = {}, {}
    for i, path in enumerate(chunk):
      image, error = _try_read(path)
      if image is None:
        errors[i] = error
      else:
        images[i] = image
    probs = None
    if images:
      batch = np.zeros((batch_size,) + input_pipeline.IMAGE_SHAPE, np.uint8)
      batch[: len(images)] = np.stack(list(images.values()))
      probs = np.asarray(fn(trained.variables, batch))
    rows = {i: row for row, i in enumerate(images)}
    for i, path in enumerate(chunk):
      if i in errors:
        yield Prediction(str(path), None, errors[i])
        continue
      p = probs[rows[i]]
      best = np.argsort(-p, kind="stable")[:top_k]
      yield Prediction(
        str(path), [{"class": trained.class_names[c], "probability": float(p[c])} for c in best]
      )


class OutputWriter:
  """Writes predictions to a .jsonl or .csv file as they come."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.format = check_output_path(self.path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "w", newline="")
    self._csv = None
    if self.format == ".csv":
      self._csv = csv.writer(self._file)
      self._csv.writerow(["file", "rank", "class", "probability"])

  def write(self, prediction: Prediction) -> None:
    if prediction.predictions is None:
      return
    if self._csv is not None:
      for rank, p in enumerate(prediction.predictions, 1):
        self._csv.writerow([prediction.file, rank, p["class"], p["probability"]])
    else:
      self._file.write(
        json.dumps({"file": prediction.file, "predictions": prediction.predictions}) + "\n"
      )

  def close(self) -> None:
    self._file.close()


def check_output_path(path: str | Path) -> str:
  suffix = Path(path).suffix.lower()
  if suffix not in OUTPUT_SUFFIXES:
    raise PredictError(
      f"--output={path}: the file name must end in .jsonl or .csv (the format is taken from it)."
    )
  return suffix


def format_line(prediction: Prediction) -> str:
  return f"{prediction.file}: " + ", ".join(
    f"{p['class']} {p['probability']:.3f}" for p in prediction.predictions
  )


# ---- command line -----------------------------------------------------------------
# Flag values of its own, not absl's global ones: tests call `main` in a
# process that also holds cifar_jax.main's required flags.
FLAGS = flags.FlagValues()
flags.DEFINE_string(
  "workdir", None, "The training run's directory (config.json, checkpoints).", flag_values=FLAGS
)
flags.DEFINE_string(
  "config",
  None,
  "Use this config (a .json, or a .py[:variant] config file) instead of the workdir's config.json.",
  flag_values=FLAGS,
)
flags.DEFINE_integer(
  "top_k", 3, "How many classes to print per image, best first.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_string(
  "output", None, "Also write the predictions to this .jsonl or .csv file.", flag_values=FLAGS
)
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer(
  "step",
  None,
  "Use the checkpoint of this step (default: the best checkpoint, else the latest).",
  flag_values=FLAGS,
)
flags.DEFINE_enum(
  "tta",
  None,
  list(augment.TTA_MODES),
  "Test-time augmentation (default: the config's tta).",
  flag_values=FLAGS,
)
flags.mark_flag_as_required("workdir", flag_values=FLAGS)


def _warn(message: str) -> None:
  print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
  """Classifies the images of the command line `argv` (without the program
  name; None: sys.argv's)."""
  inputs = cli.parse_own_flags(FLAGS, argv, PROG, __doc__)
  try:
    return _main(inputs)
  except USER_ERRORS as e:
    sys.exit(f"{PROG}: error: {e}")


def _main(inputs: list[str]) -> int:
  if not inputs:
    raise PredictError(
      "no images: pass image files and/or folders after the flags, e.g. "
      f"`python -m {PROG} --workdir=runs/r18 photo.jpg pictures/`."
    )
  if FLAGS.output:
    check_output_path(FLAGS.output)
  files, problems = find_images(inputs)
  if not files:
    raise PredictError("; ".join(problems) + ": nothing to classify.")
  for problem in problems:
    _warn(f"{problem}; skipping it.")
  config = load_config(FLAGS.workdir, FLAGS.config)
  trained = load_trained(FLAGS.workdir, config, step=FLAGS.step)
  tta = FLAGS.tta or trained.config.tta
  print(f"{trained.description}, tta={tta}: classifying {len(files)} file(s)", file=sys.stderr)
  writer = OutputWriter(FLAGS.output) if FLAGS.output else None
  unreadable = 0
  try:
    for prediction in predict_files(
      trained, files, top_k=FLAGS.top_k, batch_size=FLAGS.batch_size, tta=tta
    ):
      if prediction.error is not None:
        unreadable += 1
        _warn(f"cannot read {prediction.file} ({prediction.error}); skipped it.")
        continue
      print(format_line(prediction))
      if writer is not None:
        writer.write(prediction)
  finally:
    if writer is not None:
      writer.close()
  if unreadable == len(files):
    raise PredictError(
      f"none of the {len(files)} file(s) could be read as an image: pass PNG or JPEG files."
    )
  if writer is not None:
    print(f"Wrote {len(files) - unreadable} prediction(s) to {FLAGS.output}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  cli.start_program()
  sys.exit(main())
