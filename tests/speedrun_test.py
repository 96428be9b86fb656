"""The speedrun network: data-initialised patch whitening, dirac init, and its
config trained end to end (with lookahead or EMA and TTA evaluation) on a tiny split."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_split

from cifar_jax import checkpoint
from cifar_jax import evaluate
from cifar_jax import models
from cifar_jax import optim
from cifar_jax import run as run_lib
from cifar_jax import steps
from cifar_jax import train
from cifar_jax.configs import speedrun
from cifar_jax.configs import speedrun_muon
from cifar_jax.models import speedrun as speedrun_model

SMALL_WIDTHS = (16, 32, 32)


def _correlated_images(n, seed):
  """uint8 images whose 2x2x3 patches are strongly correlated, like natural
  images: 4x4 blocks of one grey level, tinted, plus a little noise."""
  rng = np.random.default_rng(seed)
  blocks = np.repeat(np.repeat(rng.uniform(0, 1, (n, 8, 8, 1)), 4, 1), 4, 2)
  colour = blocks * np.array([0.9, 0.8, 0.7]) + 0.05 * rng.standard_normal((n, 32, 32, 3))
  return np.clip(np.round(colour * 255), 0, 255).astype(np.uint8)


def _config(config_module=speedrun, **model):
  config = config_module.get_config()
  config.model.widths = SMALL_WIDTHS
  for k, v in model.items():
    setattr(config.model, k, v)
  return config


def _patches(x):
  """(N*31*31, 12) 2x2x3 patches ordered (dy, dx, channel)."""
  return np.concatenate(
    [x[:, dy : 31 + dy, dx : 31 + dx] for dy in (0, 1) for dx in (0, 1)], axis=-1
  ).reshape(-1, 12)


def test_whitening_init_decorrelates_held_out_patches():
  config = _config()
  model = run_lib.create_model(config)
  tx, _ = optim.create_optimizer(config, 10)
  state = run_lib.create_train_state(config, model, tx, init_images=_correlated_images(300, 0))
  template = run_lib.create_train_state(config, model, tx)  # what evaluate.py restores into
  assert jax.tree.map(jnp.shape, template.batch_stats) == jax.tree.map(jnp.shape, state.batch_stats)
  assert jax.tree.map(jnp.shape, template.params) == jax.tree.map(jnp.shape, state.params)

  x = steps.normalize(steps.to_unit_float(jnp.asarray(_correlated_images(100, 1))))
  patches = _patches(np.asarray(x, np.float64))
  correlation = np.corrcoef(patches.T)
  assert np.abs(correlation - np.eye(12)).max() > 0.9  # far from white to begin with

  _, captured = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats},
    x,
    train=False,
    capture_intermediates=lambda mdl, _: isinstance(mdl, speedrun_model.PatchWhitening),
    mutable=["intermediates"],
  )
  out = np.asarray(captured["intermediates"]["whiten"]["__call__"][0], np.float64)
  assert out.shape == (100, 31, 31, 24)
  out = out.reshape(-1, 24) - np.asarray(state.params["whiten"]["bias"])  # bias starts at 0
  np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # +/- pairs
  moment = out[:, :12].T @ out[:, :12] / len(out)
  np.testing.assert_allclose(moment, np.eye(12), atol=0.05)


def test_whitening_filters_give_unit_second_moments_on_their_data():
  x = np.asarray(steps.normalize(steps.to_unit_float(jnp.asarray(_correlated_images(50, 2)))))
  filters = speedrun_model.whitening_filters(x, 2, eps=0.0)
  assert filters.shape == (2, 2, 3, 12)
  y = _patches(x.astype(np.float64)) @ filters.reshape(12, 12)
  np.testing.assert_allclose(y.T @ y / len(y), np.eye(12), atol=1e-3)


def test_data_init_is_registered_and_checked():
  assert models.get_data_init("speedrun") is speedrun_model.init_whitening
  assert models.get_data_init("resnet18") is None
  with pytest.raises(ValueError, match="already has a data init"):
    models.register_data_init("speedrun", speedrun_model.init_whitening)
  with pytest.raises(ValueError, match="before its data init"):
    models.register_data_init("no_such_model", speedrun_model.init_whitening)


def test_dirac_init_starts_convs_as_identities():
  kernel = np.asarray(speedrun_model.dirac_init(jax.random.key(0), (3, 3, 4, 6)))
  x = np.random.default_rng(0).standard_normal((1, 5, 5, 4)).astype(np.float32)
  y = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # the first min(in, out) filters
  assert np.abs(kernel[..., 4:]).max() <= 1 / np.sqrt(3 * 3 * 4)  # PyTorch's U(+-1/sqrt(fan_in))


def test_speedrun_config_trains_and_evaluates_with_tta(tmp_path, compile_cache):
  """The full recipe (SGD with the 64x BatchNorm-bias lr, triangle schedule,
  label smoothing, lookahead, flip_translate TTA) at reduced width, through the
  ordinary loop: accuracy rises, evaluate.py restores the run, and the
  whitening filters stay frozen."""
  config = _config()
  config.num_epochs = 3
  config.batch_size = 32
  # The peak lr of a batch of 1024 (1.5) for this batch: 30 steps instead of ~430.
  config.optimizer.lr_base_batch_size = 32
  config.eval_batch_size = 64
  config.log_every_steps = 10
  config.compilation_cache_dir = compile_cache
  train_split = make_split(320, learnable=True)  # 10 steps per epoch
  eval_split = make_split(128, seed=1, learnable=True)
  record = train.train_and_evaluate(
    config, tmp_path, train_split=train_split, eval_split=eval_split
  )
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert "eval_accuracy" not in records[0]  # eval_every_epochs: only after the last
  assert records[-1]["train_accuracy"] > records[0]["train_accuracy"] + 0.2, records
  assert record["eval_accuracy"] > 0.3 and record["ema_eval_accuracy"] > 0.3, record  # chance 0.1

  # evaluate.py restores into a template made without images: the slow weights
  # it evaluates, TTA included, are those of the run.
  result = evaluate.evaluate(config, tmp_path, split=eval_split)
  assert result["accuracy"] == pytest.approx(record["ema_eval_accuracy"])

  model = run_lib.create_model(config)
  tx, _ = optim.create_optimizer(config, 10)
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  state, _ = ckpt.restore(run_lib.create_train_state(config, model, tx), "latest")
  ckpt.close()
  x = steps.normalize(
    steps.to_unit_float(jnp.asarray(train_split.images[: run_lib.DATA_INIT_IMAGES]))
  )
  filters = speedrun_model.whitening_filters(x)
  for weights in (state.batch_stats, state.ema["batch_stats"]):
    np.testing.assert_allclose(
      weights["whiten"]["kernel"], np.concatenate([filters, -filters], -1), rtol=1e-5, atol=1e-5
    )


def test_speedrun_muon_config_trains_with_kernels_at_fixed_norm(tmp_path, compile_cache):
  """The Muon recipe through the ordinary loop at reduced width: accuracy
  rises, and every convolution kernel ends at norm sqrt(out channels) while
  the other parameters are free."""
  config = _config(speedrun_muon)
  config.num_epochs = 3
  config.batch_size = 32
  config.optimizer.lr_base_batch_size = 32  # the SGD part's peak lr of batch 2000
  config.eval_batch_size = 64
  config.compilation_cache_dir = compile_cache
  record = train.train_and_evaluate(
    config,
    tmp_path,
    train_split=make_split(320, learnable=True),
    eval_split=make_split(128, seed=1, learnable=True),
  )
  assert record["eval_accuracy"] > 0.3, record  # chance 0.1

  model = run_lib.create_model(config)
  tx, _ = optim.create_optimizer(config, 10)
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  state, _ = ckpt.restore(run_lib.create_train_state(config, model, tx), "latest")
  ckpt.close()
  kernels = [p for p in jax.tree.leaves(state.params) if p.ndim == 4]
  assert len(kernels) == 2 * len(SMALL_WIDTHS)
  for kernel in kernels:
    # The last step moved each kernel off the sphere by one Muon update.
    assert float(jnp.linalg.norm(kernel)) == pytest.approx(np.sqrt(kernel.shape[-1]), rel=0.1)
  head = state.params["Dense_0"]["kernel"]
  assert float(jnp.linalg.norm(head)) != pytest.approx(np.sqrt(head.shape[-1]), rel=0.1)


@pytest.mark.parametrize("size", [31, 30, 15, 7, 3])
def test_padding_before_pool_computes_exactly_what_the_pool_keeps(size):
  """The reduced padding equals a SAME conv cropped to the pooled region, in
  values and in the kernel and input gradients."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  kept = size - size % 2

  def same_then_crop(x, w):
    y = jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y[:, :kept, :kept]

  def reduced(x, w):
    return jax.lax.conv_general_dilated(
      x,
      w,
      (1, 1),
      speedrun_model.padding_before_pool(size),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

  np.testing.assert_allclose(reduced(x, w), same_then_crop(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  for got, want in zip(
    jax.grad(loss(reduced), (0, 1))(x, w), jax.grad(loss(same_then_crop), (0, 1))(x, w)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_block_depth_3_is_airbench96s_network():
  """widths 128/384/512 with three convs per group: airbench96's parameter
  count (convs without bias, BatchNorm biases only, the whitening bias and a
  bias-free head), and a residual around each group's second and third conv."""
  from cifar_jax.models import summary

  widths, count = (128, 384, 512), 24 + 10 * 512  # whitening bias, head
  for cin, cout in zip((24,) + widths[:-1], widths):
    count += 9 * cin * cout + 2 * 9 * cout * cout + 3 * cout
  model = models.get_model("speedrun", widths=widths, block_depth=3)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert summary.count_params(variables["params"]) == count == 9_915_416

  # With the third conv's kernel at zero, BatchNorm of its (zero) output is
  # its bias, so the group returns act(bias + shortcut): the shortcut shows.
  small = models.get_model("speedrun", widths=(8, 8, 8), block_depth=3)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(small.init)(jax.random.key(0), x)
  params = jax.tree_util.tree_map_with_path(
    lambda path, p: jnp.zeros_like(p) if "Conv_2" in jax.tree_util.keystr(path) else p,
    variables["params"],
  )
  apply = functools.partial(small.apply, capture_intermediates=True, mutable=["intermediates"])
  _, inter = jax.jit(apply)({**variables, "params": params}, x)
  group = inter["intermediates"]["ConvGroup_0"]
  shortcut = jax.nn.gelu(group["BatchNorm_0"]["__call__"][0])
  np.testing.assert_allclose(group["__call__"][0], jax.nn.gelu(shortcut), rtol=1e-5, atol=1e-6)
