"""The search's exceptions: a setting or directory it cannot use, and a trial
stopped by Ctrl-C."""

from __future__ import annotations


class SearchError(ValueError):
  """A search setting or state that cannot be used; the message says the fix."""


class SearchInterrupted(RuntimeError):
  """A trial was stopped with Ctrl-C; its checkpoint is saved."""
