"""steps: the lookahead of train_step equals airbench94's, step for step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from fake_data import make_split

from cifar_jax import run as run_lib
from cifar_jax import steps


def _step_fn(run, **options):
  return jax.jit(
    functools.partial(
      steps.train_step,
      augment_fn=run.augment_fn,
      num_classes=10,
      **options,
    )
  )


def test_lookahead_is_airbench94s_sync(tiny_config):
  tiny_config.lookahead.every_steps = 2
  tiny_config.lookahead.decay = 0.8
  tiny_config.augment = ""
  run = run_lib.build_run(tiny_config, num_train_examples=64)
  split = make_split(64)
  batch = {"image": jnp.asarray(split.images[:32]), "label": jnp.asarray(split.labels[:32])}
  total = 6
  decay = lambda count: 0.8 * (count / total) ** 3  # noqa: E731
  with_lookahead = _step_fn(run, lookahead_every=2, lookahead_decay_fn=decay)
  plain = _step_fn(run)

  state = run.state
  # The reference: plain steps, then airbench's LookaheadState.update by hand.
  ref = run.state
  slow = jax.tree.map(np.asarray, {"params": ref.params, "batch_stats": ref.batch_stats})
  for count in range(1, total + 1):
    rng = jax.random.fold_in(run.state.rng, count)
    state, _ = with_lookahead(state, batch, rng)
    ref, _ = plain(ref, batch, rng)
    if count % 2 == 0:
      d = decay(count)
      net = {"params": ref.params, "batch_stats": ref.batch_stats}
      slow = jax.tree.map(lambda e, n, d=d: e + (1 - d) * (np.asarray(n) - e), slow, net)
      ref = ref.replace(params=slow["params"], batch_stats=slow["batch_stats"])
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, state.ema, slow)
  jax.tree.map(close, state.params, ref.params)
  # The sync did something: the slow weights are not the plain run's.
  plain_state = run.state
  for count in range(1, total + 1):
    plain_state, _ = plain(plain_state, batch, jax.random.fold_in(run.state.rng, count))
  leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])  # noqa: E731
  assert not np.allclose(leaf(state.params), leaf(plain_state.params))


def test_lookahead_and_ema_together_are_refused(tiny_config):
  from cifar_jax import config_checks

  tiny_config.lookahead.every_steps = 5
  tiny_config.ema_decay = 0.9
  errors = config_checks.config_errors(tiny_config)
  assert any("set one of them to 0" in e for e in errors)
