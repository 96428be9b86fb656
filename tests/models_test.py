"""Tests of every registered model: shapes, determinism, training, bf16, counts.

Behavioural tests use reduced-size variants of the same modules (SMALL) so the
file stays fast on CPU; parameter counts are pinned for the full-size defaults
via jax.eval_shape, which allocates nothing.
"""

import contextlib
import functools
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from cifar_jax import models
from cifar_jax.models import __main__ as models_cli
from cifar_jax.models import summary

NAMES = models.model_names()

# Exact trainable-parameter counts of the full-size default models.
PARAM_COUNTS = {
  "cspnet": 2_076_074,
  "deep_cnn": 453_242,
  "efficientnet_b0": 4_020_358,
  "efficientnet_b1": 6_525_994,
  "lenet5": 62_006,
  "mobilenet_v2": 2_236_682,
  "my_cnn": 1_336_170,
  "resnet18": 11_173_962,
  "resnet34": 21_282_122,
  "resnet50": 23_520_842,
  "resnet_budget": 4_697_162,
  "simple_cnn": 80_090,
  "speedrun": 1_971_352,  # + 288 frozen whitening weights in batch_stats
  "swin_small": 48_805_732,
  "swin_tiny": 27_505_108,
  "vit_small": 21_342_346,
  "vit_tiny": 5_362_762,
}

# Reduced-size variants (module fields of the same code) for behavioural tests.
# Variants whose small versions coincide (B0/B1, tiny/small, resnet18/34) share
# one compilation (see `cached`); their full sizes differ in PARAM_COUNTS.
_SMALL_EFFNET = dict(
  width_mult=0.25,
  depth_mult=1.0,
  head_features=64,
  strides=(1, 2),
  stages=((1, 3, 16, 1), (6, 5, 24, 2)),
)
# 8x8 tokens: a shifted, masked 4x4-window stage, then a 4x4 stage where the
# window covers the whole map (no shift).
_SMALL_SWIN = dict(patch_size=4, embed_dim=16, depths=(2, 1), num_heads=(1, 2), drop_path_rate=0.2)
_SMALL_VIT = dict(embed_dim=32, depth=2, num_heads=2)
SMALL = {
  "cspnet": dict(stem_width=8, widths=(16, 32), depths=(1,)),
  "deep_cnn": dict(widths=(4, 4, 4, 4, 8, 8, 8, 8), hidden=(16, 8, 8, 8)),
  "efficientnet_b0": _SMALL_EFFNET,
  "efficientnet_b1": _SMALL_EFFNET,
  "mobilenet_v2": dict(
    width_mult=0.25, last_features=64, strides=(1, 2), stages=((1, 16, 1), (6, 24, 2))
  ),
  "my_cnn": dict(widths=(8, 8, 8, 8, 16, 16), hidden=32),
  "resnet18": dict(width=8, stage_sizes=(1, 1)),
  "resnet34": dict(width=8, stage_sizes=(1, 1)),
  "resnet50": dict(width=8, stage_sizes=(1, 1)),
  # Non-default kernels and a 2x2 pooled map exercise every budget field.
  "resnet_budget": dict(
    stage_sizes=(1, 1), widths=(8, 16), kernel_sizes=(3, 5), skip_kernel_sizes=(1, 3), pool_size=8
  ),
  "speedrun": dict(widths=(8, 16, 16)),
  "swin_small": _SMALL_SWIN,
  "swin_tiny": _SMALL_SWIN,
  "vit_small": _SMALL_VIT,
  "vit_tiny": _SMALL_VIT,
}

# The tests run each executable a handful of times on tiny inputs, so LLVM's
# optimisations cost far more than they save; opt level 0 compiles ~3x faster.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_CACHE = {}


def cached(kind, model, build):
  """build() once per (kind, model config): variants whose small versions are
  the same module (e.g. vit_tiny and vit_small) share compilation and init."""
  cache_key = (kind, repr(model))
  if cache_key not in _CACHE:
    _CACHE[cache_key] = build()
  return _CACHE[cache_key]


def compile_fast(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)


def small_model(name, **kw):
  return models.get_model(name, **SMALL.get(name, {}), **kw)


def images(n, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, 32, 32, 3), jnp.float32)


def small_variables(name):
  """model.init of the small variant, shared by the behavioural tests."""
  model, x = small_model(name), images(2)
  init = lambda x: model.init(jax.random.key(0), x, train=False)
  return cached("init", model, lambda: compile_fast(init, x)(x))


def compiled_forward(model, variables, x):
  """Compiled (variables, x, dropout_key) -> (train logits, eval logits)."""

  def forward(variables, x, key):
    train_logits, _ = model.apply(
      variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
    )
    # No rngs in eval mode: any stochastic layer left on would fail here.
    return train_logits, model.apply(variables, x, train=False)

  return cached("forward", model, lambda: compile_fast(forward, variables, x, jax.random.key(0)))


def test_every_model_is_pinned():
  assert sorted(PARAM_COUNTS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
  variables = summary.abstract_variables(models.get_model(name))
  assert summary.count_params(variables) == PARAM_COUNTS[name]
  if name == "resnet_budget":
    assert PARAM_COUNTS[name] < 5_000_000


@pytest.mark.parametrize("name", NAMES)
def test_forward_train_and_eval(name):
  variables, x = small_variables(name), images(2)
  forward = compiled_forward(small_model(name), variables, x)
  train1, eval1 = forward(variables, x, jax.random.key(1))
  _, eval2 = forward(variables, x, jax.random.key(2))
  for logits in (train1, eval1):
    assert logits.shape == (2, 10)
    assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_array_equal(np.asarray(eval1), np.asarray(eval2))


@pytest.mark.parametrize("name", NAMES)
def test_a_few_adam_steps_lower_the_loss(name):
  model = small_model(name)
  variables = small_variables(name)
  # Adam is elementwise, so updating the flattened parameter vector is the same
  # as updating the tree, and compiles faster (one fusion instead of one per leaf).
  flat_params, unravel = ravel_pytree(variables["params"])
  batch_stats = variables.get("batch_stats", {})
  x, labels = images(8, seed=3), jnp.arange(8) % 10
  tx = optax.adam(1e-3)
  dropout_key = jax.random.key(4)  # fixed so losses of successive steps compare

  def loss_fn(flat_params, batch_stats):
    logits, new_state = model.apply(
      {"params": unravel(flat_params), "batch_stats": batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_key},
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, new_state.get("batch_stats", {})

  def train_step(flat_params, batch_stats, opt_state):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(flat_params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, flat_params)
    return optax.apply_updates(flat_params, updates), batch_stats, opt_state, loss

  opt_state = tx.init(flat_params)
  step = cached(
    "step", model, lambda: compile_fast(train_step, flat_params, batch_stats, opt_state)
  )
  losses = []
  for _ in range(9):  # the 9th loss is the one after 8 updates
    flat_params, batch_stats, opt_state, loss = step(flat_params, batch_stats, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all(), losses
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_forward(name):
  model = small_model(name, dtype=jnp.bfloat16)
  x = images(2)
  # Parameters stay float32 under bf16 compute (checked without allocating).
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes["params"])} == {jnp.dtype("float32")}
  # Same tree as the float32 variant, so reuse its initial values.
  variables = small_variables(name)
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  forward = compiled_forward(model, variables, x)
  for logits in forward(variables, x, jax.random.key(1)):
    assert logits.shape == (2, 10)
    assert logits.dtype in (jnp.bfloat16, jnp.float32)
    assert np.isfinite(np.asarray(logits, np.float32)).all()


def run_cli(argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert models_cli.main(argv) == 0
  return out.getvalue()


def test_cli_json_lists_every_model():
  # FLOPs need one compilation per full-size model (~15 s for all of them), so
  # every model is listed without them and two with them.
  rows = json.loads(run_cli(["--json", "--no-flops"]))
  assert [r["name"] for r in rows] == NAMES
  for r in rows:
    assert r["params"] == PARAM_COUNTS[r["name"]]
  rows = json.loads(run_cli(["--json", "lenet5", "resnet18"]))
  assert [r["name"] for r in rows] == ["lenet5", "resnet18"]
  # LeNet-5 does 651,720 multiply-adds; XLA counts 2 FLOPs each plus the
  # bias adds, ReLUs and pooling.
  assert 1.0 * 2 * 651_720 <= rows[0]["flops"] <= 1.05 * 2 * 651_720
  assert rows[1]["flops"] > 100 * rows[0]["flops"]
  table = run_cli(["lenet5", "resnet18"])
  assert "11,173,962" in table and "MFLOPs" in table


def test_cli_layers_prints_a_per_layer_table():
  table = run_cli(["lenet5", "--layers"])
  assert table.startswith("lenet5\n")
  for text in (
    "Conv_0",
    "Dense_2",
    "float32[1,32,32,3]",
    "float32[1,28,28,6]",
    "flops",
    "kernel: float32[5,5,3,6]",
    "Total Parameters: 62,006",
  ):
    assert text in table
  # The first convolution's row: 5*5*3 multiply-adds for each of 28*28*6
  # outputs, 2 FLOPs each, plus the bias adds.
  conv_row = next(line for line in table.splitlines() if "Conv_0" in line)
  flops = int(conv_row.split("│")[5])
  assert 2 * 75 * 28 * 28 * 6 <= flops <= 1.05 * 2 * 75 * 28 * 28 * 6
  # BatchNorm statistics are counted apart from the trainable parameters.
  small = run_cli(["resnet18", "--layers", "--depth=1", "--no-flops"])
  assert "BasicBlock_0" in small and "BasicBlock_0/Conv_0" not in small
  assert "flops" not in small and "Trainable parameters" in small
  assert "11,173,962" in small
  with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
    models_cli.main(["--layers"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 4), (3, 6, 6, 5)])
def test_fast_max_pool_matches_flax_max_pool(shape, dtype):
  """The pool used for speed gives flax's values and gradients exactly, ties
  included (coarse values make many windows hold equal maxima, and ReLU
  zeros do the same in real nets): each window's gradient goes to its first
  maximum, as select-and-scatter sends it."""
  import flax.linen as nn

  from cifar_jax.models import layers

  x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 1.5).astype(dtype)
  x = jax.nn.relu(x)
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
  np.testing.assert_array_equal(layers.max_pool(x, 2), reference(x))
  weights = jnp.linspace(-1.0, 1.0, reference(x).size).reshape(reference(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x).astype(jnp.float32) * weights))(x)  # noqa: E731
  ours, theirs = grad(lambda x: layers.max_pool(x, 2)), grad(reference)
  np.testing.assert_array_equal(ours, theirs)
  # Each window passes its output's gradient on exactly once.
  np.testing.assert_allclose(
    float(jnp.sum(ours.astype(jnp.float32))), float(jnp.sum(weights)), atol=1e-5
  )


@pytest.mark.parametrize("with_bias", [True, False])
def test_folded_layer_norm_equals_layer_norm_then_dense(with_bias):
  """DeferredLayerNorm -> FoldingDense (the transformers' LayerNorm whose
  scale and shift are folded into the next dense layer's kernel and bias) is
  nn.LayerNorm -> nn.Dense with the same parameters: the same values and the
  same gradients for the input and every parameter, through a token
  rearrangement (Swin's roll) between the two."""
  import flax.linen as nn

  from cifar_jax.models import layers

  roll = lambda t: jnp.roll(t, (-1, -1), axis=(1, 2))  # noqa: E731

  class Folded(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = layers.DeferredLayerNorm(1e-5, name="norm")(x).map_tokens(roll)
      return layers.FoldingDense(24, use_bias=with_bias, name="dense")(y)

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = roll(nn.LayerNorm(1e-5, name="norm")(x))
      return nn.Dense(24, use_bias=with_bias, name="dense")(y)

  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
  params = Folded().init(jax.random.key(1), x)["params"]
  # Not the initial ones and zeros, so that a missed scale or shift shows.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(
    tree, [p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )
  assert jax.tree.structure(params) == jax.tree.structure(
    Plain().init(jax.random.key(1), x)["params"]
  )
  weights = jax.random.normal(jax.random.key(3), (2, 4, 4, 24))

  def loss(module, params, x):
    return jnp.sum(module.apply({"params": params}, x) * weights)

  np.testing.assert_allclose(
    Folded().apply({"params": params}, x),
    Plain().apply({"params": params}, x),
    rtol=1e-5,
    atol=1e-5,
  )
  ours = jax.grad(lambda p, x: loss(Folded(), p, x), argnums=(0, 1))(params, x)
  theirs = jax.grad(lambda p, x: loss(Plain(), p, x), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_equals_flax_conv(dtype, use_bias):
  """layers.Conv is nn.Conv: the same parameter tree, values and gradients
  (its bias gradient is summed in float32, which bf16 only makes closer)."""
  import flax.linen as nn

  from cifar_jax.models import layers

  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 6))
  ours = layers.Conv(12, (3, 3), strides=2, use_bias=use_bias, dtype=dtype)
  theirs = nn.Conv(12, (3, 3), strides=2, use_bias=use_bias, dtype=dtype)
  params = theirs.init(jax.random.key(1), x)["params"]
  params = jax.tree.map(lambda p: p + 0.1, params)  # a bias that is not zero
  assert jax.tree.structure(ours.init(jax.random.key(1), x)["params"]) == jax.tree.structure(params)
  weights = jax.random.normal(jax.random.key(2), (4, 4, 4, 12))

  def loss(module, params, x):
    return jnp.sum(module.apply({"params": params}, x).astype(jnp.float32) * weights)

  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(
    ours.apply({"params": params}, x).astype(jnp.float32),
    theirs.apply({"params": params}, x).astype(jnp.float32),
    rtol=tol,
    atol=tol,
  )
  grads = [
    jax.grad(functools.partial(loss, module), argnums=(0, 1))(params, x)
    for module in (ours, theirs)
  ]
  for a, b in zip(*(jax.tree.leaves(g) for g in grads)):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_bf16_conv_bias_gradient_compiles_to_one_reduction():
  """The bias gradient of a bf16 layers.Conv stays a plain float32 reduction
  on XLA:CPU, where nn.Conv's own (a bf16 sum over 128 x 16 x 16 values)
  becomes a tree of reduce-windows, which ran unvectorised at ~40% of
  my_cnn's bf16 train step."""
  import flax.linen as nn

  from cifar_jax.models import layers

  x = jax.random.normal(jax.random.key(0), (128, 16, 16, 8), jnp.bfloat16)
  weights = jax.random.normal(jax.random.key(1), (128, 16, 16, 16))

  def compiled_gradient(conv_class):
    conv = conv_class(16, (3, 3), dtype=jnp.bfloat16)
    params = conv.init(jax.random.key(2), x)["params"]
    loss = lambda p: jnp.sum(nn.relu(conv.apply({"params": p}, x)).astype(jnp.float32) * weights)
    return jax.jit(jax.grad(loss)).lower(params).compile().as_text()

  assert "reduce-window" in compiled_gradient(nn.Conv)  # what this guards against
  assert "reduce-window" not in compiled_gradient(layers.Conv)


@pytest.mark.parametrize("name", ["gelu", "gelu_exact", "swish"])
def test_one_pass_activations_equal_flax_and_round_once_in_bf16(name):
  """layers.gelu, gelu_exact and swish (one fused pass each way) are flax's
  nn.gelu, nn.gelu(approximate=False) and nn.swish: the same values and
  gradients in float32; in bf16 they round the output alike, and their
  gradient, computed in float32 and rounded once, is closer to the float32
  one than autodiff of flax's bf16 chain."""
  import flax.linen as nn

  from cifar_jax.models import layers

  ours = getattr(layers, name)
  theirs = {
    "gelu": nn.gelu,
    "gelu_exact": lambda v: nn.gelu(v, approximate=False),
    "swish": nn.swish,
  }[name]
  x = 3.0 * jax.random.normal(jax.random.key(0), (4096,))
  weights = jax.random.normal(jax.random.key(1), x.shape)

  def grad(fn, x):
    return jax.grad(lambda v: jnp.sum(fn(v).astype(jnp.float32) * weights))(x)

  np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grad(ours, x), grad(theirs, x), rtol=1e-5, atol=1e-5)
  reference = np.asarray(grad(theirs, x))
  xb = x.astype(jnp.bfloat16)
  assert ours(xb).dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(ours(xb)), np.float32(theirs(xb)), rtol=2e-2, atol=2e-2)
  our_error = np.abs(np.float32(grad(ours, xb)) - reference)
  their_error = np.abs(np.float32(grad(theirs, xb)) - reference)
  assert our_error.max() < their_error.max() and our_error.mean() <= their_error.mean()


def test_named_activations_are_the_one_pass_ones():
  from cifar_jax.models import layers

  assert layers.activation("gelu") is layers.gelu
  assert layers.activation("swish") is layers.activation("silu") is layers.swish


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_equals_flax_batch_norm(dtype, affine):
  """layers.BatchNorm in training (its closed-form `normalize_batch`) is
  nn.BatchNorm: the same output, input and parameter gradients and running
  mean; its running variance takes the unbiased batch variance (PyTorch's)."""
  import flax.linen as nn

  from cifar_jax.models import layers

  x = (3.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 6))).astype(dtype)
  kwargs = dict(momentum=0.9, epsilon=1e-5, dtype=dtype, use_bias=affine, use_scale=affine)
  ours, theirs = layers.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
  variables = theirs.init(jax.random.key(1), x, use_running_average=False)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # not the initial ones and zeros
  assert jax.tree.structure(ours.init(jax.random.key(1), x, use_running_average=False)) == (
    jax.tree.structure(variables)
  )
  weights = jax.random.normal(jax.random.key(2), x.shape)

  def loss(module, params, x):
    y, updates = module.apply(
      {**variables, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
    )
    return jnp.sum(nn.gelu(y.astype(jnp.float32)) * weights), (y, updates["batch_stats"])

  results = [
    jax.grad(functools.partial(loss, m), argnums=(0, 1), has_aux=True)(
      variables.get("params", {}), x
    )
    for m in (ours, theirs)
  ]
  (our_grads, (our_y, our_stats)), (their_grads, (their_y, their_stats)) = results
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(
    our_y.astype(jnp.float32), their_y.astype(jnp.float32), rtol=tol, atol=tol
  )
  for a, b in zip(jax.tree.leaves(our_grads), jax.tree.leaves(their_grads)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
  np.testing.assert_allclose(our_stats["mean"], their_stats["mean"], rtol=1e-5)
  n = 8 * 5 * 5
  old_var = variables["batch_stats"]["var"]
  unbiased = old_var * 0.9 + (their_stats["var"] - old_var * 0.9) * n / (n - 1)
  np.testing.assert_allclose(our_stats["var"], unbiased, rtol=1e-5)
