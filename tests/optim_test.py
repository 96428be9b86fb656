"""Schedules, weight-decay masks, learning-rate scaling and every optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cifar_jax import optim
from cifar_jax.configs import base


def _config(**schedule):
  config = base.get_config()
  config.num_epochs = 10
  config.optimizer.learning_rate = 0.1
  for k, v in schedule.items():
    setattr(config.schedule, k, v)
  return config


def test_cosine_warms_up_linearly_then_decays_to_the_end_value():
  lr = optim.create_learning_rate_fn(_config(name="cosine", warmup_epochs=1.0), 100)
  assert float(lr(0)) == 0.0
  assert float(lr(50)) == pytest.approx(0.05)
  assert float(lr(100)) == pytest.approx(0.1)
  assert float(lr(550)) == pytest.approx(0.05, abs=2e-3)
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-6)


def test_piecewise_decays_at_epoch_boundaries():
  config = _config(
    name="piecewise", warmup_epochs=0.0, boundaries_epochs=(3.0, 6.0), decay_factor=0.1
  )
  lr = optim.create_learning_rate_fn(config, 100)
  assert [float(lr(s)) for s in (0, 299, 301, 599, 601)] == pytest.approx(
    [0.1, 0.1, 0.01, 0.01, 0.001]
  )


def test_piecewise_with_warmup_keeps_boundaries_in_epochs():
  config = _config(name="piecewise", warmup_epochs=1.0, boundaries_epochs=(3.0,))
  lr = optim.create_learning_rate_fn(config, 100)
  assert float(lr(50)) == pytest.approx(0.05)
  assert float(lr(299)) == pytest.approx(0.1) and float(lr(301)) == pytest.approx(0.01)


def test_onecycle_peaks_at_pct_start():
  lr = optim.create_learning_rate_fn(_config(name="onecycle", pct_start=0.3), 100)
  values = np.array([float(lr(s)) for s in range(0, 1000, 10)])
  assert values.argmax() * 10 == pytest.approx(300, abs=10)
  assert values.max() == pytest.approx(0.1, rel=1e-3)
  assert values[0] == pytest.approx(0.1 / 25)


def test_constant_schedule_and_unknown_name():
  lr = optim.create_learning_rate_fn(_config(name="constant", warmup_epochs=0.0), 100)
  assert float(lr(0)) == float(lr(999)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="schedule.name"):
    optim.create_learning_rate_fn(_config(name="cosin"), 100)


def test_linear_scaling_with_batch_size():
  config = _config()
  config.batch_size = 512
  config.optimizer.lr_base_batch_size = 128
  assert optim.peak_learning_rate(config) == pytest.approx(0.4)


def test_decay_mask_skips_biases_and_norm_params():
  params = {
    "conv": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.ones(8)},
    "bn": {"scale": jnp.ones(8)},
  }
  assert optim.decay_mask(params, False) == {
    "conv": {"kernel": True, "bias": False},
    "bn": {"scale": False},
  }
  assert all(jax.tree.leaves(optim.decay_mask(params, True)))
  vit_like = {
    "cls_token": jnp.zeros((1, 1, 8)),
    "pos_embedding": jnp.zeros((1, 5, 8)),
    "attn": {"relative_position_bias_table": jnp.zeros((9, 2)), "kernel": jnp.zeros((8, 8))},
  }
  assert optim.decay_mask(vit_like, False) == {
    "cls_token": False,
    "pos_embedding": False,
    "attn": {"relative_position_bias_table": False, "kernel": True},
  }


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lars", "lamb"])
def test_every_optimizer_descends_a_quadratic(name):
  config = _config(name="constant", warmup_epochs=0.0)
  config.optimizer.name = name
  config.optimizer.learning_rate = 0.05
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 10.0
  tx, _ = optim.create_optimizer(config, 10)
  params = {"w": jnp.full((4, 4), 3.0), "b": jnp.full((4,), -2.0)}
  loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))  # noqa: E731
  state = tx.init(params)
  start = float(loss(params))
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.9 * start


def test_weight_decay_is_not_applied_to_biases():
  config = _config(name="constant", warmup_epochs=0.0)
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.5
  tx, _ = optim.create_optimizer(config, 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5)
  np.testing.assert_allclose(updates["bias"], 0.0)


def test_unknown_optimizer():
  config = _config()
  config.optimizer.name = "adamax"
  with pytest.raises(ValueError, match="optimizer.name"):
    optim.create_optimizer(config, 10)


def test_linear_onecycle_is_airbench_triangle():
  config = _config(name="linear_onecycle", pct_start=0.25, div_factor=5.0, end_lr_factor=0.1)
  lr = optim.create_learning_rate_fn(config, 100)  # 1000 steps, peak at 250
  assert [float(lr(s)) for s in (0, 125, 250, 625, 1000)] == pytest.approx(
    [0.02, 0.06, 0.1, 0.055, 0.01]
  )


def test_norm_lr_multiplier_scales_the_gradient_not_the_decay():
  config = _config(name="constant", warmup_epochs=0.0)
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.5
  config.optimizer.decay_norm_and_bias = True
  config.optimizer.norm_lr_multiplier = 64.0
  tx, _ = optim.create_optimizer(config, 10)
  params = {
    "BatchNorm_0": {"bias": jnp.ones(2)},
    "norm1": {"scale": jnp.ones(2)},
    "Conv_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
  }
  grads = jax.tree.map(
    jnp.full_like,
    params,
    {"BatchNorm_0": {"bias": 1.0}, "norm1": {"scale": 1.0}, "Conv_0": {"kernel": 1.0, "bias": 1.0}},
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["BatchNorm_0"]["bias"], -0.1 * (64.0 + 0.5))
  np.testing.assert_allclose(updates["norm1"]["scale"], -0.1 * (64.0 + 0.5))
  np.testing.assert_allclose(updates["Conv_0"]["kernel"], -0.1 * (1.0 + 0.5))
  np.testing.assert_allclose(updates["Conv_0"]["bias"], -0.1 * (1.0 + 0.5))
  config.optimizer.name = "adam"
  with pytest.raises(ValueError, match="norm_lr_multiplier"):
    optim.create_optimizer(config, 10)


def _muon_config(**optimizer):
  config = _config(name="linear_onecycle", pct_start=0.5, div_factor=4.0, end_lr_factor=0.0)
  config.optimizer.name = "muon"
  config.optimizer.weight_decay = 0.0
  config.optimizer.muon_momentum = 0.0
  config.optimizer.muon_ns_steps = 5
  config.optimizer.muon_fixed_norm = False
  for k, v in optimizer.items():
    setattr(config.optimizer, k, v)
  return config


def _conv_and_dense_params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {
    "Conv_0": {"kernel": jax.random.normal(keys[0], (3, 3, 8, 16))},
    "Dense_0": {
      "kernel": jax.random.normal(keys[1], (16, 10)),
      "bias": jax.random.normal(keys[2], (10,)),
    },
  }


def test_muon_orthogonalises_kernel_updates_at_the_scheduled_rate():
  config = _muon_config(muon_learning_rate=0.2)
  tx, lr = optim.create_optimizer(config, 10)
  params = _conv_and_dense_params()
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  muon_lr = 0.2 * float(lr(0)) / 0.1  # the schedule starts at a quarter of its peak
  assert muon_lr == pytest.approx(0.05)
  # The (3*3*8) x 16 matrix of the update has every singular value near
  # muon_lr: Newton-Schulz's approximate orthogonalisation (0.5 to 1.5).
  singular = (
    np.linalg.svd(np.asarray(updates["Conv_0"]["kernel"]).reshape(72, 16), compute_uv=False)
    / muon_lr
  )
  assert singular.min() > 0.5 and singular.max() < 1.5
  # Its direction is the gradient's, orthogonalised: a descent direction.
  assert float(jnp.vdot(updates["Conv_0"]["kernel"], grads["Conv_0"]["kernel"])) < 0


def test_muon_treats_everything_but_kernels_as_sgd_does():
  config = _muon_config(momentum=0.9, weight_decay=0.01, norm_lr_multiplier=8.0)
  muon_tx, _ = optim.create_optimizer(config, 10)
  config.optimizer.name = "sgd"
  sgd_tx, _ = optim.create_optimizer(config, 10)
  params = _conv_and_dense_params()
  params["norm1"] = {"bias": jnp.ones(16)}
  muon_state, sgd_state = muon_tx.init(params), sgd_tx.init(params)
  for step in range(3):
    grads = jax.tree.map(lambda p: jnp.sin(p + step), params)  # noqa: B023
    muon_updates, muon_state = muon_tx.update(grads, muon_state, params)
    sgd_updates, sgd_state = sgd_tx.update(grads, sgd_state, params)
    for name in ("Dense_0", "norm1"):
      for leaf, value in muon_updates[name].items():
        np.testing.assert_allclose(value, sgd_updates[name][leaf], rtol=1e-6)
    assert not np.allclose(muon_updates["Conv_0"]["kernel"], sgd_updates["Conv_0"]["kernel"])
    params = optax.apply_updates(params, muon_updates)


def test_muon_fixed_norm_rescales_kernels_to_sqrt_output_channels():
  config = _muon_config(muon_fixed_norm=True)
  tx, _ = optim.create_optimizer(config, 10)
  params = _conv_and_dense_params()
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(jnp.linalg.norm(new["Conv_0"]["kernel"])) == pytest.approx(4.0, rel=1e-5)
  np.testing.assert_allclose(
    new["Conv_0"]["kernel"] / params["Conv_0"]["kernel"],
    4.0 / float(jnp.linalg.norm(params["Conv_0"]["kernel"])),
    rtol=1e-5,
  )
  np.testing.assert_allclose(new["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_norm_lr_extra_params_take_the_norm_rate_too():
  config = _config(name="constant", warmup_epochs=0.0)
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.norm_lr_multiplier = 64.0
  config.optimizer.norm_lr_extra_params = r"^whiten/bias$"
  tx, _ = optim.create_optimizer(config, 10)
  params = {"whiten": {"bias": jnp.ones(2)}, "Dense_0": {"bias": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["whiten"]["bias"], -0.1 * 64.0)
  np.testing.assert_allclose(updates["Dense_0"]["bias"], -0.1)


@pytest.mark.parametrize("name", ["sgd", "muon"])
def test_frozen_params_stop_after_their_epochs_decay_included(name):
  """airbench's whitening bias: trained for the first epochs, then fixed,
  weight decay and momentum included, while everything else trains on."""
  config = _config(name="constant", warmup_epochs=0.0)
  config.optimizer.name = name
  config.optimizer.weight_decay = 0.1
  config.optimizer.decay_norm_and_bias = True
  config.optimizer.freeze_params = "whiten/bias"
  config.optimizer.freeze_after_epochs = 2.0
  tx, _ = optim.create_optimizer(config, 3)  # 3 steps an epoch: frozen from step 6
  params = {"whiten": {"bias": jnp.ones(4)}, "Dense_0": {"bias": jnp.ones(4)}}
  state = tx.init(params)
  history = []
  for _ in range(9):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  whiten = [float(p["whiten"]["bias"][0]) for p in history]
  dense = [float(p["Dense_0"]["bias"][0]) for p in history]
  assert all(a != b for a, b in zip(whiten[:6], [1.0] + whiten[:5]))  # trains 6 steps
  assert whiten[5:] == [whiten[5]] * 4  # then stays, momentum and decay included
  assert all(a > b for a, b in zip(dense, dense[1:]))  # the rest trains on


@pytest.mark.parametrize(
  "warm_up", [dict(pct_start=0.0, div_factor=1.0), dict(pct_start=0.5, div_factor=10.0)]
)
def test_frozen_params_lr_can_fall_linearly_to_the_freeze(warm_up):
  """freeze_lr="linear" (airbench94_muon's whitening bias): with plain SGD
  and a linear schedule over 10 steps, the frozen parameter moves by
  peak * (1 - t / 4) at steps t = 0..3 and not at all from step 4, while the
  others follow the schedule. With a warm-up (from 0.1 x peak over 5 steps)
  the ramp still starts at the peak, not at the warm-up's first value."""
  config = _config(name="linear_onecycle", end_lr_factor=0.0, **warm_up)
  config.num_epochs = 10
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.freeze_params = "whiten/bias"
  config.optimizer.freeze_after_epochs = 4.0
  config.optimizer.freeze_lr = "linear"
  tx, lr = optim.create_optimizer(config, 1)
  peak = optim.peak_learning_rate(config)
  assert float(lr(0)) == pytest.approx(peak if warm_up["div_factor"] == 1.0 else peak / 10)
  params = {"whiten": {"bias": jnp.zeros(2)}, "Dense_0": {"bias": jnp.zeros(2)}}
  state = tx.init(params)
  for t in range(6):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    expected = peak * (1 - t / 4) if t < 4 else 0.0
    np.testing.assert_allclose(updates["whiten"]["bias"], -expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], -float(lr(t)), rtol=1e-5)
    params = optax.apply_updates(params, updates)


def test_bad_parameter_patterns_are_named(tiny_config):
  from cifar_jax import config_checks

  tiny_config.optimizer.freeze_params = "whiten/(bias"
  tiny_config.optimizer.norm_lr_extra_params = "["
  errors = config_checks.config_errors(tiny_config)
  assert any(e.startswith("config.optimizer.freeze_params must be a regular") for e in errors)
  assert any(e.startswith("config.optimizer.norm_lr_extra_params must be") for e in errors)
