"""Tests of cifar_jax.export: two tiny runs, a resnet with BatchNorm and EMA
(trained with oneDNN convolutions under pmap where the extension loads) and a
ViT with flip TTA, are trained once and exported; the deserialised StableHLO
and the reloaded SavedModel must give the Flax model's probabilities for two
batch sizes (the batch is symbolic)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_split
from conftest import make_tiny_config

from cifar_jax import checkpoint
from cifar_jax import cpu_conv
from cifar_jax import export
from cifar_jax import input_pipeline
from cifar_jax import parallel
from cifar_jax import precision
from cifar_jax import predict
from cifar_jax import run as run_lib
from cifar_jax import steps
from cifar_jax import train

BATCH_SIZES = (1, 5)


def _train(tmp_path_factory, compile_cache, name, **changes):
  config = make_tiny_config(compile_cache)
  config.num_epochs = 1
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  path = tmp_path_factory.mktemp(name)
  # No evaluation, which would compile more: the export takes the latest checkpoint.
  train.train_and_evaluate(
    config, path, train_split=make_split(64, learnable=True), eval_split=None
  )
  return path, predict.load_trained(path)


ONEDNN = cpu_conv.available()


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, compile_cache):
  # oneDNN serves one program per device: pmap over the test's 4 CPU devices.
  # (One run for both: each training compiles for half a minute on 2 cores.)
  backend = {"conv_backend": "onednn", "parallel": "pmap"} if ONEDNN else {}
  return _train(
    tmp_path_factory,
    compile_cache,
    "resnet",
    **{
      "model.name": "resnet18",
      "model.width": 8,
      "model.stage_sizes": (1, 1),
      "ema_decay": 0.5,
      **backend,
    },
  )


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, compile_cache):
  return _train(
    tmp_path_factory,
    compile_cache,
    "vit",
    **{
      "model.name": "vit_tiny",
      "model.depth": 1,
      "model.embed_dim": 32,
      "model.num_heads": 2,
      "model.patch_size": 8,
      "tta": "flip",
    },
  )


RUNS = ["resnet_run", "vit_run"]


def uint8_images(n, seed=0):
  return np.random.default_rng(seed).integers(
    0, 256, (n,) + input_pipeline.IMAGE_SHAPE, dtype=np.uint8
  )


def reference_probabilities(trained, images):
  """The Flax model's probabilities, with the config's TTA spelt out."""
  model = run_lib.create_model(trained.config)

  def probs(x):
    logits = model.apply(trained.variables, steps.model_inputs(jnp.asarray(x)), train=False)
    return jax.nn.softmax(logits)

  views = [images] if trained.config.tta == "none" else [images, images[:, :, ::-1]]
  return np.mean([np.asarray(probs(v)) for v in views], axis=0)


@pytest.mark.parametrize("run", RUNS)
def test_stablehlo_matches_the_flax_model(run, request, tmp_path, capsys):
  workdir, trained = request.getfixturevalue(run)
  out = tmp_path / "model.stablehlo"
  if run == "resnet_run":  # the command line once; it loads the run again
    assert export.main(["--workdir", str(workdir), "--format=stablehlo", "--out", str(out)]) == 0
    assert f"Wrote {out}" in capsys.readouterr().err
  else:
    export.export(trained, "stablehlo", out)
  exported = jax.export.deserialize(out.read_bytes())
  assert str(exported.in_avals[0].shape) == "(b, 32, 32, 3)"
  assert exported.in_avals[0].dtype == jnp.uint8
  assert set(exported.platforms) == {"cpu", "cuda"}
  for n in BATCH_SIZES:
    images = uint8_images(n, seed=n)
    got = np.asarray(exported.call(images))
    assert got.shape == (n, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_probabilities(trained, images), atol=1e-5)

  meta = json.loads((tmp_path / "model.stablehlo.json").read_text())
  assert meta["classes"] == list(input_pipeline.CIFAR10_CLASSES)
  assert meta["input"]["shape"] == ["b", 32, 32, 3] and meta["input"]["dtype"] == "uint8"
  assert meta["output"]["shape"] == ["b", 10]
  assert meta["model"] == trained.config.model.name and meta["step"] == trained.step == 2
  assert meta["weights"] == trained.weights and meta["tta"] == trained.config.tta


@pytest.mark.parametrize("run", RUNS)
def test_savedmodel_matches_the_flax_model(run, request, tmp_path):
  tf = pytest.importorskip("tensorflow")
  _, trained = request.getfixturevalue(run)
  out = tmp_path / "saved"
  meta_path = export.export(trained, "savedmodel", out)
  assert json.loads(meta_path.read_text())["signature"] == "serving_default"
  loaded = tf.saved_model.load(str(out))
  serving = loaded.signatures["serving_default"]
  for n in BATCH_SIZES:
    images = uint8_images(n, seed=10 + n)
    expected = reference_probabilities(trained, images)
    got = serving(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(loaded.serve(images)["probabilities"].numpy(), expected, atol=1e-5)


def test_a_run_with_ema_exports_its_ema_weights(resnet_run):
  workdir, trained = resnet_run
  assert trained.weights == "ema"
  template = run_lib.build_run(
    trained.config, layout=run_lib.Layout(parallel.DataParallel("jit", 1), precision.XLA_FORM)
  ).state
  ckpt = checkpoint.Checkpointer(workdir, keep_best=True, read_only=True)
  state, _ = ckpt.restore(template, "best_or_latest")
  ckpt.close()
  assert jax.tree.structure(trained.variables) == jax.tree.structure(state.ema)
  for ours, ema in zip(jax.tree.leaves(trained.variables), jax.tree.leaves(state.ema)):
    np.testing.assert_array_equal(ours, ema)
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.ema["params"]), jax.tree.leaves(state.params))
  )


@pytest.mark.skipif(not ONEDNN, reason="the oneDNN extension does not load")
def test_a_run_trained_with_onednn_convolutions_exports_the_xla_form(resnet_run, tmp_path):
  _, trained = resnet_run
  assert trained.config.conv_backend == "onednn"
  out = tmp_path / "onednn.stablehlo"
  export.export(trained, "stablehlo", out, platforms=("cpu",))
  exported = jax.export.deserialize(out.read_bytes())
  assert "Onednn" not in exported.mlir_module()  # plain XLA ops, portable
  onednn_model = run_lib.create_model(trained.config, precision.Compute(jnp.float32, "onednn"))
  onednn_model = jax.jit(functools.partial(onednn_model.apply, train=False))
  for n in BATCH_SIZES:
    images = uint8_images(n, seed=20 + n)
    got = np.asarray(exported.call(images))
    np.testing.assert_allclose(got, reference_probabilities(trained, images), atol=1e-5)
    # What the run computed in training, with oneDNN's convolutions.
    trained_form = jax.nn.softmax(
      onednn_model(trained.variables, steps.model_inputs(jnp.asarray(images)))
    )
    np.testing.assert_allclose(got, np.asarray(trained_form), atol=1e-4)


def test_export_without_a_checkpoint_says_train_first(tmp_path):
  with pytest.raises(SystemExit) as e:
    export.main(
      ["--workdir", str(tmp_path), "--format=stablehlo", "--out", str(tmp_path / "m.stablehlo")]
    )
  assert "No checkpoint in" in str(e.value.code) and "train first" in str(e.value.code)
