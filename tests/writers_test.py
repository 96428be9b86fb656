"""writers: TensorBoard hparams of the config, and W&B runs that a restart continues."""

import sys
import types

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from cifar_jax import writers


def _session_start_hparams(logdir):
  """The hparams of every session-start summary in `logdir`'s event files."""
  found = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == "_hparams_/session_start_info":
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          found.append(
            {
              k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
              for k, v in data.session_start_info.hparams.items()
            }
          )
  return found


def test_config_is_logged_as_tensorboard_hparams(tiny_config, tmp_path):
  tiny_config.schedule.boundaries_epochs = (3.0, 5.0)
  writer = writers.MetricWriter(tmp_path, tiny_config)
  writer.write_epoch({"epoch": 1, "step": 3, "eval_accuracy": 0.25})
  writer.close()
  (hparams,) = _session_start_hparams(tmp_path / "tensorboard")
  assert hparams["model.name"] == "lenet5"
  assert hparams["optimizer.learning_rate"] == pytest.approx(tiny_config.optimizer.learning_rate)
  assert hparams["num_epochs"] == tiny_config.num_epochs
  assert hparams["schedule.boundaries_epochs"] == "(3.0, 5.0)"
  assert "wandb.project" not in hparams  # unset: left out


def test_a_metrics_only_writer_logs_no_hparams(tmp_path):
  writer = writers.MetricWriter(tmp_path)  # what --mode=eval's image writer is
  writer.close()
  assert _session_start_hparams(tmp_path / "tensorboard") == []


def _fake_wandb(monkeypatch):
  calls = []

  class Run:
    def log(self, *args, **kwargs):
      pass

    def finish(self):
      pass

  def init(**kwargs):
    calls.append(kwargs)
    return Run()

  module = types.SimpleNamespace(init=init)
  monkeypatch.setitem(sys.modules, "wandb", module)
  return calls


def test_a_restarted_run_continues_its_wandb_run(tiny_config, tmp_path, monkeypatch):
  calls = _fake_wandb(monkeypatch)
  tiny_config.wandb.project = "cifar"
  for name in ("run", "run", "other"):  # a run, its resumption, another run
    (tmp_path / name).mkdir(exist_ok=True)
    writers.MetricWriter(tmp_path / name, tiny_config).close()
  ids = [c["id"] for c in calls]
  assert ids[0] == ids[1] != ids[2]
  assert all(c["resume"] == "allow" for c in calls)
  assert (tmp_path / "run" / writers.WANDB_RUN_ID_FILE).read_text().strip() == ids[0]


def test_wandb_offline_run_keeps_its_id_across_restarts(tiny_config, tmp_path):
  """With the real wandb, offline: both sessions log to the one run id."""
  pytest.importorskip("wandb")
  tiny_config.wandb.project = "cifar"
  tiny_config.wandb.mode = "offline"
  for step in (1, 2):
    writer = writers.MetricWriter(tmp_path, tiny_config)
    writer.write_epoch({"epoch": step, "step": step, "eval_accuracy": 0.1 * step})
    writer.close()
  run_id = (tmp_path / writers.WANDB_RUN_ID_FILE).read_text().strip()
  runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
  assert len(runs) == 2 and all(name.endswith("-" + run_id) for name in runs)
