"""evaluator: a progress bar on long evaluations, counting every example once."""

import io
import re
import sys

from fake_data import make_split

from cifar_jax import progress
from cifar_jax import run as run_lib


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _evaluator(tiny_config, num_examples):
  run = run_lib.build_run(tiny_config)
  state = run.place(run.state)
  return run.evaluator(make_split(num_examples), state), state


def test_progress_bar_counts_the_examples_on_a_terminal(tiny_config, monkeypatch):
  evaluator, state = _evaluator(tiny_config, 70)  # 32 + 32 + 6 (padded)
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  bars = []
  make_bar = progress.bar
  monkeypatch.setattr(progress, "bar", lambda *a, **k: bars.append(make_bar(*a, **k)) or bars[-1])
  sums, _ = evaluator.run(state, desc="eval fake")
  assert round(float(sums["count"])) == 70
  assert bars[0].n == 70  # the padding is not counted
  shown = terminal.getvalue()
  assert "eval fake" in shown and re.search(r"\d+/70 ", shown), shown


def test_no_bar_without_a_terminal_or_a_description(tiny_config, monkeypatch):
  evaluator, state = _evaluator(tiny_config, 40)
  for stream, desc in ((io.StringIO(), "eval fake"), (_Terminal(), None)):
    monkeypatch.setattr(sys, "stderr", stream)
    evaluator.run(state, desc=desc)
    assert stream.getvalue() == ""
