"""Exports a trained run's model for serving: StableHLO, or a TensorFlow SavedModel.

    python -m cifar_jax.export --workdir=runs/r18 --format=stablehlo --out=exports/r18.stablehlo
    python -m cifar_jax.export --workdir=runs/r18 --format=savedmodel --out=exports/r18_savedmodel

Both hold one function: uint8 RGB images (N, 32, 32, 3), N any batch size
(a symbolic dimension), -> float32 class probabilities (N, num_classes).
Normalisation, the config's test-time augmentation (`--tta` overrides it) and
the softmax are inside, so callers pass raw pixels, resized to 32x32 the way
cifar_jax.predict does. The model is the float32 XLA form of the run's
(`run.create_model`'s default): a run trained with bf16 or with oneDNN
convolutions (`conv_backend`) exports all the same, as the plain XLA ops any
StableHLO consumer runs. The weights are the checkpoint's (best, else the
latest; `--step=N`), the EMA ones if the run trained with `ema_decay`; they
are loaded by `predict.load_trained`.

- `stablehlo`: the bytes of `jax.export`'s `Exported.serialize()`, weights
  embedded as constants; read back with
  `jax.export.deserialize(open(path, "rb").read()).call(images)`.
- `savedmodel`: a directory for `tf.saved_model.load` through
  `jax.experimental.jax2tf` (the StableHLO inside an XlaCallModule op, the
  weights as TF variables). Its signature `serving_default` takes `images`
  and returns `{"probabilities": ...}`; the restored object's `serve(images)`
  is the same function.

Either is lowered for `--platforms` (default cpu,cuda). Next to it goes a JSON
sidecar, OUT + ".json": class names, the input and output specs, the model,
its options, the step, which weights and the TTA.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import flags

from cifar_jax import augment
from cifar_jax import checkpoint
from cifar_jax import cli
from cifar_jax import input_pipeline
from cifar_jax import predict
from cifar_jax import records

PROG = "cifar_jax.export"
FORMATS = ("stablehlo", "savedmodel")
DEFAULT_PLATFORMS = ("cpu", "cuda")
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
BATCH = "b"  # the symbolic batch dimension


def input_shape_spec() -> str:
  """'b, 32, 32, 3': the images' shape with a symbolic batch."""
  return ", ".join([BATCH, *map(str, input_pipeline.IMAGE_SHAPE)])


def serving_function(
  trained: predict.Trained, tta: str | None = None
) -> Callable[[Any, jax.Array], jax.Array]:
  """fn(variables, uint8 images) -> probabilities, for `trained`'s model."""
  return predict.probabilities_fn(trained.model, trained.config.tta if tta is None else tta)


def export_stablehlo(
  trained: predict.Trained,
  out: str | Path,
  *,
  tta: str | None = None,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> jax.export.Exported:
  """Writes the serialised `jax.export` of images -> probabilities to `out`."""
  fn = serving_function(trained, tta)
  variables = trained.variables
  images = jax.ShapeDtypeStruct(jax.export.symbolic_shape(input_shape_spec()), jnp.uint8)
  exported = jax.export.export(jax.jit(lambda x: fn(variables, x)), platforms=tuple(platforms))(
    images
  )
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(exported.serialize())
  return exported


def export_savedmodel(
  trained: predict.Trained,
  out: str | Path,
  *,
  tta: str | None = None,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> None:
  """Writes a TensorFlow SavedModel of images -> probabilities to the folder `out`."""
  import tensorflow as tf  # Imported late: TensorFlow is slow to start.
  from jax.experimental import jax2tf

  fn = serving_function(trained, tta)
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(trained.variables)

  def from_leaves(leaves, images):
    return fn(jax.tree.unflatten(treedef, leaves), images)

  tf_fn = jax2tf.convert(
    from_leaves,
    polymorphic_shapes=[None, f"({input_shape_spec()})"],
    with_gradient=False,
    native_serialization_platforms=tuple(platforms),
  )
  module = tf.Module()
  # Variables, not constants folded into the graph: a GraphDef must stay under
  # 2 GB, and TF tools list and load variables by name.
  module.weights = [
    tf.Variable(jax.device_get(leaf), trainable=False, name=_tf_name(path))
    for path, leaf in leaves_with_paths
  ]
  spec = tf.TensorSpec((None,) + input_pipeline.IMAGE_SHAPE, tf.uint8, name=INPUT_NAME)

  @tf.function(input_signature=[spec], autograph=False)
  def serve(images):
    return {OUTPUT_NAME: tf_fn(list(module.weights), images)}

  module.serve = serve
  tf.saved_model.save(module, str(out), signatures={SIGNATURE: serve.get_concrete_function()})


def _tf_name(path) -> str:
  name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return re.sub(r"[^A-Za-z0-9_./-]", "_", name) or "weight"


def sidecar_path(out: str | Path) -> Path:
  return Path(str(out).rstrip("/") + ".json")


def sidecar(
  trained: predict.Trained,
  fmt: str,
  *,
  tta: str | None = None,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict[str, Any]:
  """What a consumer of the export needs to know, as JSON."""
  config = trained.config
  num_classes = len(trained.class_names)
  return {
    "format": fmt,
    "classes": list(trained.class_names),
    "input": {
      "name": INPUT_NAME,
      "dtype": "uint8",
      "shape": [BATCH, *input_pipeline.IMAGE_SHAPE],
      "layout": "NHWC",
      "values": "RGB pixels 0-255, the whole image resized to 32x32 "
      "(normalisation is inside the model)",
    },
    "output": {
      "name": OUTPUT_NAME,
      "dtype": "float32",
      "shape": [BATCH, num_classes],
      "values": "class probabilities, in the order of classes",
    },
    "model": config.model.name,
    "model_options": config.model.to_dict(),
    "param_count": trained.meta.get("param_count"),
    "step": trained.step,
    "weights": trained.weights,
    "tta": config.tta if tta is None else tta,
    # Of the weights exported: the EMA's for a run that keeps one.
    "eval_accuracy": checkpoint.score(trained.meta, records.best_metric(config)),
    "platforms": list(platforms),
    **({"signature": SIGNATURE} if fmt == "savedmodel" else {}),
  }


def export(
  trained: predict.Trained,
  fmt: str,
  out: str | Path,
  *,
  tta: str | None = None,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> Path:
  """Writes `trained` in format `fmt` to `out` and its sidecar; returns the sidecar's path."""
  if fmt not in FORMATS:
    raise predict.PredictError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
  if fmt == "stablehlo":
    export_stablehlo(trained, out, tta=tta, platforms=platforms)
  else:
    export_savedmodel(trained, out, tta=tta, platforms=platforms)
  path = sidecar_path(out)
  meta = sidecar(trained, fmt, tta=tta, platforms=platforms)
  path.write_text(json.dumps(meta, indent=2) + "\n")
  return path


# ---- command line -----------------------------------------------------------------
# Flag values of its own, not absl's global ones: tests call `main` in a
# process that also holds cifar_jax.main's required flags.
FLAGS = flags.FlagValues()
flags.DEFINE_string(
  "workdir", None, "The training run's directory (config.json, checkpoints).", flag_values=FLAGS
)
flags.DEFINE_enum(
  "format",
  None,
  list(FORMATS),
  "stablehlo: a jax.export file; savedmodel: a TensorFlow SavedModel folder.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "out",
  None,
  "The file (stablehlo) or folder (savedmodel) to write; the sidecar goes to OUT.json.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "config",
  None,
  "Use this config (a .json, or a .py[:variant] config file) instead of the workdir's config.json.",
  flag_values=FLAGS,
)
flags.DEFINE_integer(
  "step",
  None,
  "Export the checkpoint of this step (default: the best checkpoint, else the latest).",
  flag_values=FLAGS,
)
flags.DEFINE_list(
  "platforms",
  list(DEFAULT_PLATFORMS),
  "Platforms to lower for (jax.export names: cpu, cuda, rocm, tpu).",
  flag_values=FLAGS,
)
flags.DEFINE_enum(
  "tta",
  None,
  list(augment.TTA_MODES),
  "Test-time augmentation baked into the export (default: the config's tta).",
  flag_values=FLAGS,
)
flags.mark_flags_as_required(["workdir", "format", "out"], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  """Exports for the command line `argv` (without the program name; None: sys.argv's)."""
  rest = cli.parse_own_flags(FLAGS, argv, PROG, __doc__)
  if rest:
    sys.exit(f"{PROG}: error: unexpected arguments {' '.join(rest)}; pass --help for the flags.")
  try:
    config = predict.load_config(FLAGS.workdir, FLAGS.config)
    trained = predict.load_trained(FLAGS.workdir, config, step=FLAGS.step)
    print(
      f"Exporting {trained.description} as {FLAGS.format} for {','.join(FLAGS.platforms)}",
      file=sys.stderr,
    )
    meta_path = export(trained, FLAGS.format, FLAGS.out, tta=FLAGS.tta, platforms=FLAGS.platforms)
  except predict.USER_ERRORS as e:
    sys.exit(f"{PROG}: error: {e}")
  print(f"Wrote {FLAGS.out} and {meta_path}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  cli.start_program()
  sys.exit(main())
