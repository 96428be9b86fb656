"""Proxy-model data filtering (cifar_jax/data_filter.py, steps.proxy_step):
the proxy keeps each batch's hardest rows and trains every n-th step, the
main step trains on exactly those rows, and a run saves the choice once and
reuses it when resumed."""

import functools
import io
import json
from contextlib import redirect_stderr

import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import make_split

from cifar_jax import augment
from cifar_jax import config_checks
from cifar_jax import data_filter
from cifar_jax import optim
from cifar_jax import run as run_lib
from cifar_jax import steps
from cifar_jax import train
from cifar_jax.configs import speedrun93


def test_select_rows_takes_the_rows_of_each_part():
  x = jnp.arange(8) * 10
  np.testing.assert_array_equal(steps.select_rows(x, jnp.array([3, 0])), [30, 0])
  # Two parts of four (two devices' shares under jit): rows within each part.
  np.testing.assert_array_equal(steps.select_rows(x, jnp.array([[1, 3], [0, 2]])), [10, 30, 40, 60])


def _small_config(compile_cache=None):
  config = speedrun93.get_config()
  config.model.widths = (8, 16, 16)
  config.data_filter.proxy_model.widths = (8, 8, 8)
  config.num_epochs = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.log_every_steps = 5
  config.tta = "none"  # its 10 views would triple the evaluation's compile time
  if compile_cache:
    config.compilation_cache_dir = compile_cache
  return config


def _proxy_state(config, steps_in_epoch):
  proxy = data_filter.proxy_config(config)
  model = run_lib.create_model(proxy)
  tx, _ = optim.create_optimizer(proxy, steps_in_epoch / config.data_filter.proxy_train_every)
  return run_lib.create_train_state(proxy, model, tx, init_images=make_split(64).images)


def test_proxy_step_keeps_the_highest_loss_rows_and_trains_every_nth_step():
  config = _small_config()
  state = _proxy_state(config, steps_in_epoch=10)
  split = make_split(32, learnable=True)
  batch = {"image": jnp.asarray(split.images), "label": jnp.asarray(split.labels)}
  aug = augment.build(config.augment)
  proxy_step = jax.jit(
    functools.partial(
      steps.proxy_step,
      keep_per_part=4,
      parts=2,
      train_every=4,
      augment_fn=aug,
      num_classes=10,
      label_smoothing=config.label_smoothing,
    )
  )

  @jax.jit
  def losses_seen(state, rng):  # the train step's augmentation with this key
    images, targets = steps.training_inputs(
      jax.random.split(rng)[0],
      batch,
      augment_fn=aug,
      num_classes=10,
      label_smoothing=config.label_smoothing,
    )
    logits, _ = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    return optax.softmax_cross_entropy(logits, targets)

  for step in range(5):
    rng = jax.random.key_data(jax.random.key(step))
    before = state
    losses = np.asarray(losses_seen(before, rng)).reshape(2, 16)
    state, keep = proxy_step(before, batch, rng)
    keep = np.asarray(keep)
    assert keep.shape == (2, 4)
    for part in range(2):
      hardest = np.sort(losses[part])[-4:]
      np.testing.assert_allclose(np.sort(losses[part][keep[part]]), hardest, rtol=1e-5)
    assert int(state.step) == step + 1  # every step counts, trained or not
    moved = not all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params))
    )
    assert moved == (step % 4 == 0), step
    # BatchNorm statistics follow every batch, as in airbench's train-mode forward.
    mean = lambda s: s["ConvGroup_0"]["BatchNorm_0"]["mean"]  # noqa: E731
    assert not np.array_equal(mean(before.batch_stats), mean(state.batch_stats))


def test_train_step_on_kept_rows_is_a_step_on_those_images():
  config = _small_config()
  config.augment = ""  # identical images either way
  model = run_lib.create_model(config)
  tx, _ = optim.create_optimizer(config, 10)
  state = run_lib.create_train_state(config, model, tx, init_images=make_split(64).images)
  split = make_split(16, seed=3)
  batch = {"image": jnp.asarray(split.images), "label": jnp.asarray(split.labels)}
  rows = np.array([[5, 1, 7], [0, 6, 2]], np.int32)  # two parts of 8
  flat = np.concatenate([rows[0], rows[1] + 8])
  step = functools.partial(
    steps.train_step, augment_fn=augment.build(""), num_classes=10, label_smoothing=0.2
  )
  rng = jax.random.key_data(jax.random.key(0))
  kept, kept_metrics = jax.jit(step)(state, {**batch, "keep": jnp.asarray(rows)}, rng)
  direct, direct_metrics = jax.jit(step)(state, jax.tree.map(lambda x: x[flat], batch), rng)
  assert int(kept_metrics["count"]) == 6
  for a, b in zip(jax.tree.leaves(kept.params), jax.tree.leaves(direct.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(kept_metrics["loss_sum"], direct_metrics["loss_sum"], rtol=1e-5)


def test_config_errors_name_the_data_filter_keys():
  config = _small_config()
  assert config_checks.config_errors(config, 4) == []
  config.data_filter.keep_fraction = 0.3  # 9.6 of 32
  config.data_filter.proxy_train_every = 0
  config.data_filter.proxy_model.name = "no_such_net"
  config.hard_mining.enabled = True
  errors = "\n".join(config_checks.config_errors(config, 4))
  for key in ("keep_fraction", "proxy_train_every", "proxy_model.name", "hard_mining"):
    assert key in errors, errors


def _run(config, workdir, **kwargs):
  err = io.StringIO()
  with redirect_stderr(err):
    record = train.train_and_evaluate(
      config,
      workdir,
      train_split=make_split(160, learnable=True),  # 5 steps of 32 per epoch
      eval_split=make_split(64, seed=1, learnable=True),
      **kwargs,
    )
  return record, err.getvalue()


def test_filtered_run_trains_on_the_proxys_rows_and_reuses_them_when_resumed(
  tmp_path, compile_cache, monkeypatch
):
  config = _small_config(compile_cache)
  proxy_runs = []
  real_run_proxy = data_filter._run_proxy

  def counting_run_proxy(*args):
    proxy_runs.append(args)
    return real_run_proxy(*args)

  monkeypatch.setattr(data_filter, "_run_proxy", counting_run_proxy)
  _, err = _run(config, tmp_path, stop_after_steps=7)
  assert "data filter: proxy speedrun" in err
  saved = np.load(tmp_path / data_filter.SELECTION_FILE)["rows"]
  # 10 steps of 4 devices x 4 rows (half of each device's 8).
  assert saved.shape == (10, 4, 4) and saved.min() >= 0 and saved.max() < 8
  assert len(proxy_runs) == 1

  record, _ = _run(config, tmp_path)
  assert len(proxy_runs) == 1  # resumed with the saved choice
  np.testing.assert_array_equal(np.load(tmp_path / data_filter.SELECTION_FILE)["rows"], saved)
  assert record["epoch"] == 2 and np.isfinite(record["train_loss"])
  assert "ema_eval_accuracy" in record  # the lookahead's slow weights
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]

  # Other proxy settings: the saved choice no longer applies.
  path = tmp_path / data_filter.SELECTION_FILE
  fingerprint = data_filter._fingerprint(config, 160, 4)
  assert data_filter._load(path, fingerprint, saved.shape) is not None
  err = io.StringIO()
  with redirect_stderr(err):
    config.data_filter.proxy_train_every = 2
    assert data_filter._load(path, data_filter._fingerprint(config, 160, 4), saved.shape) is None
    assert data_filter._load(path, fingerprint, (11, 4, 4)) is None
  assert err.getvalue().count("other proxy settings") == 2
  path.write_bytes(b"not an npz")
  with redirect_stderr(err):
    assert data_filter._load(path, fingerprint, saved.shape) is None
  assert "unreadable" in err.getvalue()


def test_filtered_run_under_pmap_keeps_rows_per_device(tmp_path, compile_cache):
  """Also a fractional run: the proxy chooses rows for its 8 steps only."""
  config = _small_config(compile_cache)
  config.parallel = "pmap"
  config.num_epochs = 1.5  # 5 steps per epoch: round(7.5) = 8 steps, the last pass stops at 3
  record, _ = _run(config, tmp_path)
  saved = np.load(tmp_path / data_filter.SELECTION_FILE)["rows"]
  assert saved.shape == (8, 4, 4) and saved.max() < 8
  assert (record["epoch"], record["step"]) == (2, 8)
  assert np.isfinite(record["train_loss"]) and np.isfinite(record["ema_eval_loss"])
