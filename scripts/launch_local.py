"""Runs one command as N processes of one multi-process JAX run on this machine.

    python scripts/launch_local.py --num_processes=2 --cpu_devices_per_process=2 -- \
        python -m cifar_jax.main --config=configs/lenet5.py --workdir=runs/mp

Each process gets JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port),
JAX_NUM_PROCESSES and JAX_PROCESS_ID, which `cifar_jax.distributed` reads
(`--config.distributed.*` left unset), and, with --cpu_devices_per_process,
JAX_NUM_CPU_DEVICES (fake CPU devices, to try multi-process runs without
GPUs); with --gpus_per_process, CUDA_VISIBLE_DEVICES gives each its own GPUs.
Ctrl-C or SIGTERM is passed on to every process (each saves a checkpoint and
stops). When one process fails, the others are stopped too, so nothing waits
on a collective that cannot finish. Exits with the first failure's code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

from absl import flags

from cifar_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_integer("num_processes", 2, "How many processes.", flag_values=FLAGS)
flags.DEFINE_integer(
  "cpu_devices_per_process",
  None,
  "JAX_NUM_CPU_DEVICES for each process (CPU runs).",
  flag_values=FLAGS,
)
flags.DEFINE_integer(
  "gpus_per_process",
  None,
  "Give process i GPUs [i*k, (i+1)*k) through CUDA_VISIBLE_DEVICES.",
  flag_values=FLAGS,
)
flags.DEFINE_integer("port", None, "Coordinator port (default: a free one).", flag_values=FLAGS)
flags.DEFINE_integer(
  "grace_s",
  60,
  "After one process fails, how long the others get to stop on SIGTERM before they are killed.",
  flag_values=FLAGS,
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_environment(
  index: int, num_processes: int, port: int, cpu_devices: int | None = None, gpus: int | None = None
) -> dict[str, str]:
  env = dict(
    os.environ,
    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
    JAX_NUM_PROCESSES=str(num_processes),
    JAX_PROCESS_ID=str(index),
  )
  if cpu_devices:
    env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    env.setdefault("JAX_PLATFORMS", "cpu")
  if gpus:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(index * gpus, (index + 1) * gpus))
  return env


def launch(
  command: Sequence[str],
  num_processes: int,
  *,
  port: int | None = None,
  cpu_devices: int | None = None,
  gpus: int | None = None,
  grace_s: float = 60,
) -> int:
  """Runs `command` as `num_processes` processes; returns the exit code."""
  port = port or free_port()
  procs = [
    subprocess.Popen(
      list(command), env=process_environment(i, num_processes, port, cpu_devices, gpus)
    )
    for i in range(num_processes)
  ]

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    failure = None
    while any(p.poll() is None for p in procs):
      if failure is None:
        failure = next((p.returncode for p in procs if p.returncode not in (None, 0)), None)
        if failure is not None:
          print(
            f"launch_local: a process exited with {failure}; stopping the others.", file=sys.stderr
          )
          forward(signal.SIGTERM, None)
          deadline = time.monotonic() + grace_s
      elif time.monotonic() > deadline:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.2)
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    sys.exit(
      "scripts/launch_local.py: error: put the command after `--`, e.g. "
      "`-- python -m cifar_jax.main --config=... --workdir=...`."
    )
  split = argv.index("--")
  cli.parse_own_flags(FLAGS, argv[:split], "scripts/launch_local.py", __doc__)
  command = argv[split + 1 :]
  if not command:
    sys.exit("scripts/launch_local.py: error: no command after `--`.")
  return launch(
    command,
    FLAGS.num_processes,
    port=FLAGS.port,
    cpu_devices=FLAGS.cpu_devices_per_process,
    gpus=FLAGS.gpus_per_process,
    grace_s=FLAGS.grace_s,
  )


if __name__ == "__main__":
  sys.exit(main())
