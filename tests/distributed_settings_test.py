"""How `distributed.initialize` calls `jax.distributed.initialize`, without
starting any process: what it passes with `distributed.auto`, with explicit
settings and with the JAX_* variables, and the settings it refuses first."""

import inspect

import jax
import pytest

from cifar_jax import distributed
from cifar_jax.configs import base

# The real signature, to read the stubbed calls' arguments by name.
INITIALIZE = inspect.signature(jax.distributed.initialize)


@pytest.fixture
def calls(monkeypatch):
  """The (args, kwargs) of every jax.distributed.initialize call; none is real."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: recorded.append((a, k)))
  monkeypatch.setattr(distributed, "_initialized", lambda: False)
  for env in distributed.ENV_KEYS.values():
    monkeypatch.delenv(env, raising=False)
  return recorded


@pytest.fixture
def waits(monkeypatch):
  """The coordinator addresses a non-zero process waited for (none is dialled)."""
  recorded = []
  monkeypatch.setattr(distributed, "_wait_for_coordinator", lambda *a: recorded.append(a))
  return recorded


def _config(**distributed_settings):
  config = base.get_config()
  config.distributed.update(distributed_settings)
  return config


def _bound(args, kwargs):
  """A call's arguments by name, as jax.distributed.initialize binds them."""
  return dict(INITIALIZE.bind(*args, **kwargs).arguments)


def test_no_settings_is_one_process_and_joins_nothing(calls):
  assert distributed.initialize(_config()) is False
  assert calls == []


def test_auto_lets_jax_detect_the_cluster(calls, waits):
  config = _config(auto=True, initialization_timeout_s=30, heartbeat_timeout_s=20)
  assert distributed.initialize(config) is False  # the stub joins nothing: one process
  assert len(calls) == 1
  args, kwargs = calls[0]
  # No coordinator_address, num_processes or process_id: jax reads SLURM,
  # Open MPI or the Cloud TPU metadata itself.
  assert args == ()
  assert kwargs == {"initialization_timeout": 30, "heartbeat_timeout_seconds": 20}
  assert waits == []


def test_explicit_settings_are_passed_with_the_timeouts(calls, waits):
  config = _config(
    coordinator_address="10.0.0.1:1234",
    num_processes=4,
    process_id=0,
    initialization_timeout_s=60,
    heartbeat_timeout_s=15,
  )
  distributed.initialize(config)
  assert [_bound(*call) for call in calls] == [
    {
      "coordinator_address": "10.0.0.1:1234",
      "num_processes": 4,
      "process_id": 0,
      "initialization_timeout": 60,
      "heartbeat_timeout_seconds": 15,
    }
  ]
  assert waits == []  # process 0 hosts the coordinator


def test_the_environment_fills_unset_keys_and_other_processes_wait_for_the_coordinator(
  calls, waits, monkeypatch
):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:4321")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  distributed.initialize(_config(initialization_timeout_s=7))
  bound = _bound(*calls[0])
  assert (bound["coordinator_address"], bound["num_processes"], bound["process_id"]) == (
    "127.0.0.1:4321",
    2,
    1,
  )
  assert waits == [("127.0.0.1:4321", 7)]


@pytest.mark.parametrize(
  "settings, message",
  [
    (
      {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 2},
      r"process_id must be in \[0, 2\)",
    ),
    (
      {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": -1},
      r"process_id must be in \[0, 2\)",
    ),
    ({"coordinator_address": "127.0.0.1:1", "num_processes": 2}, "process_id missing"),
    ({"auto": True, "num_processes": 2}, "auto=True detects the cluster's settings itself"),
    (
      {"auto": True, "initialization_timeout_s": 0},
      "initialization_timeout_s must be a positive integer, not 0",
    ),
  ],
)
def test_bad_settings_fail_before_initialize(calls, waits, settings, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(_config(**settings))
  assert calls == [] and waits == []


def test_a_failed_join_is_one_distributed_error(calls, monkeypatch):
  def refuse(*args, **kwargs):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\nmore lines")

  monkeypatch.setattr(jax.distributed, "initialize", refuse)
  with pytest.raises(distributed.DistributedError) as e:
    distributed.initialize(_config(auto=True, initialization_timeout_s=5))
  assert "could not join the cluster's settings (distributed.auto) within 5 s" in str(e.value)
  assert "RuntimeError: DEADLINE_EXCEEDED: Barrier timed out)" in str(e.value)
  assert "more lines" not in str(e.value)
