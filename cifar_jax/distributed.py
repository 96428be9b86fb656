"""Several processes as one run: start-up with jax.distributed, and who writes.

Every process runs the same program. `initialize(config)` joins them before
anything touches a device; from then on `jax.devices()` are the devices of
all processes, one mesh, and each process feeds only its addressable share
of every global array (parallel.py). The settings come from
`config.distributed` or, where a key is None, from the environment
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or, with
`distributed.auto`, from the cluster (SLURM, Open MPI, Cloud TPU: JAX's own
detection). With none of them set a run is one process, exactly as before.

Only the primary process (index 0) writes files other than checkpoints
(`is_primary`); every process takes part in orbax's checkpoint saves.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import ml_collections

ENV_KEYS = {
  "coordinator_address": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


class DistributedError(RuntimeError):
  """The processes could not be joined; the message says what to check."""


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """coordinator_address, num_processes, process_id: the config's, else the
  environment's (None where neither says)."""
  d = config.distributed
  out: dict[str, Any] = {}
  for key, env in ENV_KEYS.items():
    value = d[key] if d[key] is not None else os.environ.get(env)
    if value is not None and key != "coordinator_address":
      try:
        value = int(value)
      except ValueError:
        value = str(value)  # reported by config_errors
    out[key] = value
  return out


def config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with the distributed settings, one message per problem."""
  s = settings(config)
  given = [k for k, v in s.items() if v is not None]
  errors = []
  if given and len(given) < 3:
    missing = [f"distributed.{k}" for k in ENV_KEYS if s[k] is None]
    errors.append(
      f"config.distributed: {', '.join(missing)} missing; a multi-process run "
      "needs coordinator_address=HOST:PORT, num_processes and process_id "
      f"(or {', '.join(ENV_KEYS.values())}), or distributed.auto=True on a "
      "cluster JAX detects."
    )
  if s["num_processes"] is not None and not (
    isinstance(s["num_processes"], int) and s["num_processes"] >= 1
  ):
    errors.append(
      f"config.distributed.num_processes must be a positive integer, not {s['num_processes']!r}."
    )
  elif s["process_id"] is not None and isinstance(s["num_processes"], int):
    if not (isinstance(s["process_id"], int) and 0 <= s["process_id"] < s["num_processes"]):
      errors.append(
        f"config.distributed.process_id must be in [0, {s['num_processes']}) "
        f"(num_processes={s['num_processes']}), not {s['process_id']!r}."
      )
  address = s["coordinator_address"]
  if address is not None and (not isinstance(address, str) or ":" not in address):
    errors.append(
      f"config.distributed.coordinator_address must be HOST:PORT (process 0's "
      f"host, a free port), not {address!r}."
    )
  if given and config.distributed.auto:
    errors.append(
      "config.distributed.auto=True detects the cluster's settings itself: "
      "leave coordinator_address, num_processes and process_id unset."
    )
  for key in ("initialization_timeout_s", "heartbeat_timeout_s"):
    value = config.distributed[key]
    if not (isinstance(value, int) and value > 0):
      errors.append(f"config.distributed.{key} must be a positive integer, not {value!r}.")
  return errors


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Joins the processes of a multi-process run (once per process; a second
  call is a no-op). Returns whether this is a multi-process run. Call it
  before anything touches a device."""
  import jax

  errors = config_errors(config)
  if errors:
    raise ValueError(" ".join(errors))
  s = settings(config)
  if s["coordinator_address"] is None and not config.distributed.auto:
    return False
  if _initialized():
    return jax.process_count() > 1
  if not config.distributed.auto and s["process_id"] != 0:
    # jax aborts the whole process (no exception) when the coordinator never
    # answers; reaching its port first turns that into a message.
    _wait_for_coordinator(s["coordinator_address"], config.distributed.initialization_timeout_s)
  # If a process never joins, jax ends this one with its own log line; this
  # line says first what was being waited for.
  print(
    f"Joining {s['num_processes'] or 'the'} processes at "
    f"{s['coordinator_address'] or 'the cluster coordinator'} as process "
    f"{s['process_id'] if s['process_id'] is not None else '(from the cluster)'}; "
    f"waiting up to {config.distributed.initialization_timeout_s} s for all of them.",
    file=sys.stderr,
  )
  timeouts = {
    "initialization_timeout": config.distributed.initialization_timeout_s,
    "heartbeat_timeout_seconds": config.distributed.heartbeat_timeout_s,
  }
  try:
    if config.distributed.auto:
      jax.distributed.initialize(**timeouts)
    else:
      jax.distributed.initialize(
        s["coordinator_address"], s["num_processes"], s["process_id"], **timeouts
      )
  except Exception as e:  # noqa: BLE001 - jax raises several kinds; one message for all
    where = (
      "the cluster's settings (distributed.auto)"
      if config.distributed.auto
      else f"the coordinator at {s['coordinator_address']}"
    )
    raise DistributedError(
      f"could not join {where} within {config.distributed.initialization_timeout_s} s "
      f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}). "
      "Start every process (process 0 hosts the coordinator), check the address and "
      "port are reachable from each, and that num_processes matches."
    ) from None
  return jax.process_count() > 1


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once something listens at `address`; DistributedError after `timeout_s`."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
          f"no coordinator answered at {address} within {timeout_s} s ({e}). Start "
          "process 0 (it hosts the coordinator) with the same coordinator_address, "
          "check the host and port are reachable from here, or raise "
          "--config.distributed.initialization_timeout_s."
        ) from None
      time.sleep(0.5)


def _initialized() -> bool:
  from jax._src import distributed as jax_distributed  # no public "is initialised" yet

  return jax_distributed.global_state.client is not None


def is_primary() -> bool:
  """Whether this process writes the run's files (metrics, reports, config)."""
  import jax

  return jax.process_index() == 0


def multi_process() -> bool:
  import jax

  return jax.process_count() > 1


def agree_any(flag: bool) -> bool:
  """Whether `flag` is True on any process (a collective: every process
  must call it at the same point). One process: `flag` itself."""
  return agree_each(flag)[0]


def agree_each(*flags: bool) -> tuple[bool, ...]:
  """For each flag, whether it is True on any process, in one collective
  (every process must call it at the same point with as many flags)."""
  if not multi_process():
    return tuple(bool(f) for f in flags)
  import numpy as np
  from jax.experimental import multihost_utils

  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
  return tuple(bool(x) for x in gathered.reshape(-1, len(flags)).any(axis=0))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if multi_process():
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
