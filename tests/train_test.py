"""Train loop behaviour: device-count invariance, resuming, NaN stop, Ctrl-C,
checkpoint mismatches, exact evaluation and the files a run writes."""

import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_split

from cifar_jax import checkpoint
from cifar_jax import evaluate
from cifar_jax import metrics as metrics_lib
from cifar_jax import parallel
from cifar_jax import precision
from cifar_jax import records as records_lib
from cifar_jax import run as run_lib
from cifar_jax import steps
from cifar_jax import train
from cifar_jax import workdir as workdir_lib
from cifar_jax import writers


def _xla_one_device():
  return run_lib.Layout(parallel.DataParallel("jit", 1), precision.XLA_FORM)


def _run_steps(config, mode, num_devices, split, num_steps=3, compute=precision.XLA_FORM):
  """Trains `num_steps` steps on fixed batches; returns (losses, params)."""
  layout = run_lib.Layout(parallel.DataParallel(mode, num_devices), compute)
  run = run_lib.build_run(config, num_train_examples=10 * config.batch_size, layout=layout)
  state = run.place(run.state)
  data = run.put_split(split)
  step, _ = run.compile_train(state, data)
  batches = np.arange(num_steps * config.batch_size).reshape(num_steps, -1)
  losses = []
  for i, indices in enumerate(batches):
    state, m = step(state, run.gather(data, indices), jax.random.key_data(jax.random.key(i)))
    losses.append(float(m["loss_sum"]) / float(m["count"]))
  return np.array(losses), jax.device_get(run.par.unreplicate(state).params)


def tiny_resnet_config(config):
  """`config` set to a small BatchNorm ResNet trained by plain SGD without
  augmentation: what the step-equivalence tests compare."""
  config.model.name = "resnet18"
  config.model.width = 8  # BatchNorm must see the global batch in every mode
  config.model.stage_sizes = (1, 1)
  config.augment = ""  # random augmentation is per device under pmap
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.01
  config.schedule.warmup_epochs = 0.0
  return config


@pytest.mark.parametrize("mode,num_devices", [("jit", 4), ("pmap", 4)])
def test_multi_device_training_matches_one_device(tiny_config, mode, num_devices):
  assert jax.device_count() >= 4
  config = tiny_resnet_config(tiny_config)
  split = make_split(3 * config.batch_size, learnable=True)
  ref_losses, ref_params = _run_steps(config, "jit", 1, split)
  losses, params = _run_steps(config, mode, num_devices, split)
  assert np.isfinite(ref_losses).all()
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-4)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5), params, ref_params
  )


def _params(workdir, config):
  template = run_lib.build_run(config, layout=_xla_one_device()).state
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  state, meta = ckpt.restore(template, "latest")
  ckpt.close()
  return jax.device_get(state.params), meta


def test_resumed_run_ends_with_the_same_parameters(tiny_config, tmp_path):
  train_split, eval_split = make_split(160), make_split(40, seed=1)
  full = train.train_and_evaluate(
    tiny_config, tmp_path / "full", train_split=train_split, eval_split=eval_split
  )
  # Stop mid-epoch 1 (5 steps per epoch), then run the same command again.
  train.train_and_evaluate(
    tiny_config,
    tmp_path / "resumed",
    train_split=train_split,
    eval_split=eval_split,
    stop_after_steps=7,
  )
  stopped, meta = _params(tmp_path / "resumed", tiny_config)
  assert meta["step"] == 7
  resumed = train.train_and_evaluate(
    tiny_config, tmp_path / "resumed", train_split=train_split, eval_split=eval_split
  )
  assert resumed["step"] == full["step"] == 10
  full_params, _ = _params(tmp_path / "full", tiny_config)
  resumed_params, _ = _params(tmp_path / "resumed", tiny_config)
  jax.tree.map(np.testing.assert_array_equal, resumed_params, full_params)
  with pytest.raises(AssertionError):  # the comparison can fail
    jax.tree.map(np.testing.assert_array_equal, stopped, full_params)
  records = [
    json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  ]
  # Stopped in epoch 2 (5 steps an epoch): epoch 1's record kept, epoch 2's written once.
  assert [r["epoch"] for r in records] == [1, 2]


def test_run_writes_config_metrics_and_checkpoints(tiny_config, tmp_path):
  record = train.train_and_evaluate(
    tiny_config, tmp_path, train_split=make_split(96), eval_split=make_split(40, seed=1)
  )
  config_json = json.loads((tmp_path / "config.json").read_text())
  assert config_json["model"]["name"] == "lenet5"
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2
  for line in lines:
    r = json.loads(line)
    for key in (
      "epoch",
      "step",
      "train_loss",
      "train_accuracy",
      "eval_loss",
      "eval_accuracy",
      "learning_rate",
      "epoch_time_s",
      "train_img_per_s",
    ):
      assert isinstance(r[key], (int, float)), key
  assert "compile_s" in json.loads(lines[0])
  assert record["step"] == 6
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
  assert len(list((tmp_path / "best").iterdir())) == 1
  assert list((tmp_path / "tensorboard").iterdir())


def test_fractional_epochs_end_part_way_through_the_last_pass(tiny_config, tmp_path, capsys):
  """airbench94's 9.9 epochs: the run, its schedule and its last record stop
  at round(num_epochs * steps_in_epoch) steps, and the run resumes from there."""
  train_split = make_split(128)  # 4 steps per epoch
  tiny_config.num_epochs = 1.5
  tiny_config.schedule.name = "linear_onecycle"
  tiny_config.schedule.pct_start = 0.0
  tiny_config.schedule.div_factor = 1.0
  tiny_config.schedule.end_lr_factor = 0.0
  record = train.train_and_evaluate(
    tiny_config, tmp_path, train_split=train_split, eval_split=make_split(40, seed=1)
  )
  rows = records_lib.read(tmp_path).records
  assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4), (2, 6)]
  assert record["step"] == 6 and "eval_accuracy" in record
  # The schedule (peak falling linearly to 0) spans the 6 steps: lr(3) = peak/2, lr(5) = peak/6.
  assert rows[1]["learning_rate"] == pytest.approx(rows[0]["learning_rate"] / 3, rel=1e-5)
  capsys.readouterr()
  # Finished: the same command trains nothing more.
  train.train_and_evaluate(tiny_config, tmp_path, train_split=train_split, eval_split=None)
  assert len(records_lib.read(tmp_path).records) == 2
  assert "already holds a run trained for 1.5 epochs" in capsys.readouterr().err
  # Raised to 2 epochs, it finishes the second pass.
  tiny_config.num_epochs = 2
  record = train.train_and_evaluate(tiny_config, tmp_path, train_split=train_split, eval_split=None)
  assert record["step"] == 8


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
  train_split = make_split(96)  # 3 steps per epoch
  tiny_config.optimizer.name = "sgd"
  tiny_config.optimizer.learning_rate = 1e-3
  tiny_config.schedule.name = "constant"
  tiny_config.schedule.warmup_epochs = 0.0
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path, train_split=train_split, eval_split=None)
  tiny_config.num_epochs = 2
  tiny_config.optimizer.learning_rate = 1e30  # resumes, then diverges in epoch 2
  with pytest.raises(metrics_lib.NonFiniteLossError, match=r"step \d+ \(epoch 2\)"):
    train.train_and_evaluate(tiny_config, tmp_path, train_split=train_split, eval_split=None)
  params, meta = _params(tmp_path, tiny_config)
  assert meta["step"] == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint(tiny_config, tmp_path, monkeypatch, signum):
  """Ctrl-C, or the SIGTERM a scheduler sends before preemption."""
  calls = {"n": 0}
  original_add = metrics_lib.Accumulator.add

  def add_then_interrupt(self, m):
    original_add(self, m)
    calls["n"] += 1
    if calls["n"] == 2:
      signal.raise_signal(signum)

  monkeypatch.setattr(metrics_lib.Accumulator, "add", add_then_interrupt)
  handler_before = signal.getsignal(signum)
  with pytest.raises(train.TrainingStopped, match="Stopped at step 2; checkpoint saved in") as e:
    train.train_and_evaluate(tiny_config, tmp_path, train_split=make_split(96), eval_split=None)
  assert e.value.step == 2
  _, meta = _params(tmp_path, tiny_config)
  assert meta["step"] == 2
  assert signal.getsignal(signum) is handler_before  # restored after the run


def test_checkpoint_of_another_model_fails_clearly(tiny_config, tmp_path):
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path, train_split=make_split(64), eval_split=None)
  other = tiny_config.copy_and_resolve_references()
  other.model.name = "my_cnn"
  with pytest.raises(checkpoint.CheckpointMismatchError, match="lenet5.*my_cnn"):
    evaluate.evaluate(other, tmp_path, split=make_split(10))
  with pytest.raises(checkpoint.CheckpointMismatchError):
    train.train_and_evaluate(other, tmp_path, train_split=make_split(64), eval_split=None)
  # Same model and parameter count, different optimizer state structure.
  other = tiny_config.copy_and_resolve_references()
  other.optimizer.name = "sgd"
  with pytest.raises(checkpoint.CheckpointMismatchError, match="config.json"):
    train.train_and_evaluate(other, tmp_path, train_split=make_split(64), eval_split=None)


def test_evaluate_counts_every_example_once(tiny_config, tmp_path):
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path, train_split=make_split(64), eval_split=None)
  split = make_split(70, seed=3)  # 70 = 2 full batches of 32 + 6, padded
  result = evaluate.evaluate(tiny_config, tmp_path, split=split)
  assert result["num_examples"] == 70
  # Reference: the restored model applied to every example directly.
  params, _ = _params(tmp_path, tiny_config)
  model = run_lib.create_model(tiny_config)
  images = steps.model_inputs(jnp.asarray(split.images))
  logits = model.apply({"params": params}, images, train=False)
  predictions = np.asarray(jnp.argmax(logits, -1))
  assert result["accuracy"] == pytest.approx(np.mean(predictions == split.labels))
  confusion = np.array(result["confusion_matrix"])
  assert confusion.sum() == 70
  np.testing.assert_array_equal(confusion.sum(1), np.bincount(split.labels, minlength=10))
  path = tmp_path / "eval_train_45000.json"
  saved = json.loads(path.read_text())
  assert {"accuracy", "loss", "num_examples", "step", "split"} <= saved.keys()
  assert saved["split"] == "train[45000:]"
  mistakes = np.load(tmp_path / "eval_train_45000_mistakes.npz")
  assert (mistakes["labels"] != mistakes["predictions"]).all()


def test_evaluate_without_checkpoint_says_so(tiny_config, tmp_path):
  with pytest.raises(checkpoint.NoCheckpointError, match="train first"):
    evaluate.evaluate(tiny_config, tmp_path, split=make_split(10))


def test_safe_split_names():
  assert evaluate.safe_split_name("train[45000:]") == "train_45000"
  assert evaluate.safe_split_name("test") == "test"
  assert evaluate.safe_split_name("train[:10%]+test") == "train_10_test"


def test_half_precision_step_keeps_float32_params(tiny_config):
  tiny_config.half_precision = True
  tiny_config.model.name = "resnet18"
  tiny_config.model.width = 4
  tiny_config.model.stage_sizes = (1, 1)
  losses, params = _run_steps(tiny_config, "jit", 1, make_split(96), num_steps=2)
  assert np.isfinite(losses).all()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_ema_is_tracked_and_evaluated(tiny_config, tmp_path, capsys):
  tiny_config.ema_decay = 0.9
  record = train.train_and_evaluate(
    tiny_config, tmp_path, train_split=make_split(96), eval_split=make_split(32, seed=1)
  )
  assert 0.0 <= record["ema_eval_accuracy"] <= 1.0
  capsys.readouterr()
  result = evaluate.evaluate(tiny_config, tmp_path, split=make_split(32, seed=1))
  assert result["ema"] is True and result["weights"] == "ema"
  # best/ was chosen by the EMA weights' accuracy, the one evaluated and reported.
  assert result["selected_by"] == "ema_eval_accuracy"
  best = max(records_lib.read(tmp_path).records, key=lambda r: r["ema_eval_accuracy"])
  assert result["step"] == best["step"]
  assert result["accuracy"] == pytest.approx(best["ema_eval_accuracy"])
  said = capsys.readouterr().err
  assert "evaluating the EMA weights (ema_decay=0.9) of step" in said
  assert "the checkpoint with the best ema_eval_accuracy" in said


def test_hard_mining_and_tta_run_end_to_end(tiny_config, tmp_path):
  tiny_config.hard_mining.enabled = True
  tiny_config.hard_mining.start_epoch = 1
  tiny_config.tta = "flip_translate"
  record = train.train_and_evaluate(
    tiny_config, tmp_path, train_split=make_split(96), eval_split=make_split(40, seed=1)
  )
  assert record["epoch"] == 2 and np.isfinite(record["train_loss"])
  result = evaluate.evaluate(tiny_config, tmp_path, split=make_split(40, seed=1))
  assert result["num_examples"] == 40 and result["tta"] == "flip_translate"


# ---- what survives what ------------------------------------------------------------
def test_failed_resume_leaves_config_json_as_it_was(tiny_config, tmp_path):
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path, train_split=make_split(64), eval_split=None)
  written = (tmp_path / "config.json").read_text()
  other = tiny_config.copy_and_resolve_references()
  other.model.name = "simple_cnn"
  with pytest.raises(checkpoint.CheckpointMismatchError):
    train.train_and_evaluate(other, tmp_path, train_split=make_split(64), eval_split=None)
  assert (tmp_path / "config.json").read_text() == written


def test_torn_last_metrics_line_is_dropped_with_a_warning(tiny_config, tmp_path, capsys):
  train_split = make_split(96)
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path, train_split=train_split, eval_split=None)
  metrics_file = tmp_path / "metrics.jsonl"
  with open(metrics_file, "a") as f:
    f.write('{"epoch": 2, "step": 6, "train_loss": 1.93')  # a kill mid-write
  tiny_config.num_epochs = 2
  capsys.readouterr()
  record = train.train_and_evaluate(tiny_config, tmp_path, train_split=train_split, eval_split=None)
  assert record["epoch"] == 2
  assert f"{metrics_file}: dropped line(s) 2" in capsys.readouterr().err
  assert [json.loads(line)["epoch"] for line in metrics_file.read_text().splitlines()] == [1, 2]


def _two_epochs(tiny_config, workdir, **kwargs):
  return train.train_and_evaluate(
    tiny_config, workdir, train_split=make_split(96), eval_split=make_split(40, seed=1), **kwargs
  )


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_config, tmp_path, capsys):
  tiny_config.num_epochs = 1
  _two_epochs(tiny_config, tmp_path)
  tiny_config.num_epochs = 2
  _two_epochs(tiny_config, tmp_path)
  data = max(
    (
      p
      for p in (tmp_path / "checkpoints" / "6" / "state").rglob("*")
      if p.is_file() and "d" in p.parent.name
    ),
    key=lambda p: p.stat().st_size,
  )
  data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])  # truncated
  tiny_config.num_epochs = 3
  capsys.readouterr()
  record = _two_epochs(tiny_config, tmp_path)
  err = capsys.readouterr().err
  assert "checkpoints/6 is unreadable" in err and "using the previous one" in err
  assert record["step"] == 9
  moved = list((tmp_path / "corrupt").iterdir())
  assert [p.name.split("-")[:2] for p in moved] == [["checkpoints", "6"]]  # kept, not deleted
  # Garbage in the state's metadata, then in best/'s meta: the same.
  (tmp_path / "checkpoints" / "9" / "state" / "_METADATA").write_text("garbage{")
  best_step = next((tmp_path / "best").iterdir()).name
  (tmp_path / "best" / best_step / "meta" / "metadata").write_text("garbage{")
  capsys.readouterr()
  result = evaluate.evaluate(tiny_config, tmp_path, split=make_split(40, seed=1))
  assert result["step"] == 6  # read-only: the unreadable ones skipped, not moved
  assert f"best/{best_step} is unreadable" in capsys.readouterr().err
  tiny_config.num_epochs = 4
  record = _two_epochs(tiny_config, tmp_path)
  assert record["step"] == 12
  assert len(list((tmp_path / "corrupt").iterdir())) == 3


def test_incompatible_checkpoint_is_not_taken_for_a_corrupt_one(tiny_config, tmp_path):
  tiny_config.num_epochs = 1
  _two_epochs(tiny_config, tmp_path)
  other = tiny_config.copy_and_resolve_references()
  other.optimizer.name = "adam"
  with pytest.raises(checkpoint.CheckpointMismatchError, match="other shapes or structure"):
    _two_epochs(other, tmp_path)
  assert not (tmp_path / "corrupt").exists()


def test_best_lost_between_the_two_saves_is_reconciled(tiny_config, tmp_path, capsys):
  """best/ missing although checkpoints/ hold evaluated saves: what a kill
  between an epoch's latest save and its best save leaves."""
  _two_epochs(tiny_config, tmp_path)
  records = writers.read_metrics(tmp_path)
  best_step = max(records, key=lambda r: r["eval_accuracy"])["step"]
  shutil.rmtree(tmp_path / "best")
  (tmp_path / "best").mkdir()
  result = evaluate.evaluate(tiny_config, tmp_path, split=make_split(40, seed=1))
  assert result["step"] == best_step  # read-only: picks the best saved one
  capsys.readouterr()
  _two_epochs(tiny_config, tmp_path)  # already complete: reconciles and stops
  assert "copied it to best/" in capsys.readouterr().err
  assert [p.name for p in (tmp_path / "best").iterdir()] == [str(best_step)]


def test_second_run_on_a_workdir_stops_at_once_naming_the_first(tiny_config, tmp_path):
  with workdir_lib.RunLock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"PID {os.getpid()}"):
      _two_epochs(tiny_config, tmp_path)
  assert not (tmp_path / "config.json").exists()


def test_every_bad_value_is_named_before_any_work(tiny_config):
  tiny_config.optimizer.learning_rate = -1.0
  tiny_config.optimizer.momentum = 1.5
  tiny_config.batch_size = 30  # not a multiple of conftest's 4 devices
  tiny_config.eval_batch_size = 10
  tiny_config.num_epochs = 0
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(tiny_config, "/nonexistent/never/created")
  message = str(e.value)
  assert message.startswith("5 problems with the config:")
  for part in (
    "config.optimizer.learning_rate must be > 0, not -1.0",
    "config.optimizer.momentum must be in [0, 1), not 1.5",
    "config.batch_size=30 must be a multiple of the 4 devices",
    "config.eval_batch_size=10 must be a multiple of the 4 devices",
    "config.num_epochs must be a positive number of epochs (e.g. 10 or 9.9), not 0.0",
  ):
    assert part in message


def test_resumed_epoch_record_covers_the_whole_epoch(tiny_config, tmp_path):
  full = _two_epochs(tiny_config, tmp_path / "full")
  _two_epochs(tiny_config, tmp_path / "resumed", stop_after_steps=4)  # mid epoch 2
  resumed = _two_epochs(tiny_config, tmp_path / "resumed")
  for key in ("train_loss", "train_accuracy", "eval_accuracy"):
    assert resumed[key] == full[key], key


def test_timed_checkpoints_land_mid_epoch_and_a_kill_resumes_from_them(tiny_config, tmp_path):
  """checkpoint.every_minutes: a save whenever that long has passed since the
  last, mid-epoch too. Dropping every save after step 4 leaves what a SIGKILL
  right after it leaves (3 steps an epoch): the rerun resumes there, inside
  epoch 2, and ends with the uninterrupted run's records and parameters."""
  full = _two_epochs(tiny_config, tmp_path / "full")
  full_params, _ = _params(tmp_path / "full", tiny_config)
  tiny_config.checkpoint.every_minutes = 1e-9  # due after every step
  tiny_config.checkpoint.max_to_keep = 10
  workdir = tmp_path / "timed"
  _two_epochs(tiny_config, workdir)
  assert checkpoint.Checkpointer(workdir, read_only=True).saved_steps() == [1, 2, 3, 4, 5, 6]
  meta = json.loads((workdir / "checkpoints" / "4" / "meta" / "metadata").read_text())
  assert meta["metrics"] is None and meta["partial_epoch"]["count"] == 32  # 1 step of epoch 2
  for later in ("5", "6"):
    shutil.rmtree(workdir / "checkpoints" / later)
  shutil.rmtree(workdir / "best" / "6", ignore_errors=True)  # if epoch 2 was the best
  resumed = _two_epochs(tiny_config, workdir)
  assert writers.read_metrics(workdir)[-1]["epoch"] == 2
  for key in ("train_loss", "train_accuracy", "eval_accuracy", "step"):
    assert resumed[key] == full[key], key
  for a, b in zip(jax.tree.leaves(_params(workdir, tiny_config)[0]), jax.tree.leaves(full_params)):
    np.testing.assert_array_equal(a, b)


def test_no_timed_checkpoint_before_its_time(tiny_config, tmp_path):
  tiny_config.checkpoint.max_to_keep = 10  # the default, 10 minutes: per-epoch saves only
  _two_epochs(tiny_config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path, read_only=True).saved_steps() == [3, 6]


def test_stop_at_the_end_of_an_epoch_keeps_its_record(tiny_config, tmp_path):
  _two_epochs(tiny_config, tmp_path, stop_after_steps=3)  # the last step of epoch 1
  assert [r["epoch"] for r in writers.read_metrics(tmp_path)] == [1]
  record = _two_epochs(tiny_config, tmp_path)
  assert [r["epoch"] for r in writers.read_metrics(tmp_path)] == [1, 2]
  assert "eval_accuracy" in record


def test_lookahead_run_evaluates_its_slow_weights(tiny_config, tmp_path, capsys):
  tiny_config.lookahead.every_steps = 2
  record = train.train_and_evaluate(
    tiny_config, tmp_path, train_split=make_split(96), eval_split=make_split(32, seed=1)
  )
  assert 0.0 <= record["ema_eval_accuracy"] <= 1.0
  capsys.readouterr()
  result = evaluate.evaluate(tiny_config, tmp_path, split=make_split(32, seed=1))
  assert result["weights"] == "ema" and result["selected_by"] == "ema_eval_accuracy"
  assert "the lookahead's slow weights (every 2 steps)" in capsys.readouterr().err
