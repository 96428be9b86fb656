"""profiling: `--config.profile_steps` writes a jax.profiler trace of those steps."""

import pytest
from fake_data import make_split

from cifar_jax import config_checks
from cifar_jax import profiling
from cifar_jax import train


def test_profile_steps_write_a_trace_for_tensorboard(tiny_config, tmp_path):
  tiny_config.num_epochs = 1
  tiny_config.profile_steps = "2,3"
  train.train_and_evaluate(tiny_config, tmp_path, train_split=make_split(128), eval_split=None)
  traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_profiler_traces_exactly_the_chosen_steps(tmp_path, monkeypatch):
  events = []
  monkeypatch.setattr(profiling.jax.profiler, "start_trace", lambda d: events.append("start"))
  monkeypatch.setattr(profiling.jax.profiler, "stop_trace", lambda: events.append("stop"))
  profiler = profiling.StepProfiler((3, 4), tmp_path)
  for step in range(6):  # a run's steps 1..6
    with profiler.step(step):
      pass
    profiler.after_step(step + 1, None)
  profiler.close()
  assert profiler.traced == [3, 4] and events == ["start", "stop"]


def test_a_run_stopped_inside_the_window_closes_its_trace(tmp_path, monkeypatch):
  events = []
  monkeypatch.setattr(profiling.jax.profiler, "start_trace", lambda d: events.append("start"))
  monkeypatch.setattr(profiling.jax.profiler, "stop_trace", lambda: events.append("stop"))
  profiler = profiling.StepProfiler((1, 10), tmp_path)
  with profiler.step(0):
    pass
  profiler.after_step(1, None)
  profiler.close()  # the loop's `finally`
  assert events == ["start", "stop"]


@pytest.mark.parametrize("bad", ["3", "0,2", "5,4", "a,b", "1,2,3"])
def test_bad_profile_steps_are_named_before_any_work(tiny_config, bad):
  tiny_config.profile_steps = bad
  errors = config_checks.config_errors(tiny_config)
  assert any(e.startswith("config.profile_steps must be START,END") for e in errors), errors
