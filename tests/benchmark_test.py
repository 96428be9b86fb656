"""scripts/benchmark.py prints the issue's JSON contract (or a table),
scripts/compare_torch.py turns two measurements into ratios and
scripts/torch_zoo_bench.py times the zoo's PyTorch references."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

BENCHMARK_KEYS = {
  "model",
  "batch",
  "img_per_s",
  "eval_img_per_s",
  "compile_s",
  "input_img_per_s",
  "devices",
  "dtype",
}


def _script(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(REPO_ROOT, "scripts", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _stdout_of(fn, argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    fn(argv)
  return out.getvalue()


@pytest.fixture(scope="module")
def benchmark_script():
  return _script("benchmark")


def test_benchmark_prints_one_json_line_per_model(benchmark_script, compile_cache):
  out = _stdout_of(
    benchmark_script.main,
    [
      "--models=lenet5,simple_cnn",
      "--batch=16",
      "--steps=2",
      "--json",
      f"--compilation_cache_dir={compile_cache}",
    ],
  )
  rows = [json.loads(line) for line in out.splitlines()]
  assert [r["model"] for r in rows] == ["lenet5", "simple_cnn"]
  for row in rows:
    assert BENCHMARK_KEYS <= set(row), row
    assert row["batch"] == 16 and row["dtype"] == "float32"
    assert row["devices"] == 4  # conftest's fake CPU devices, all used by jit
    for key in ("img_per_s", "eval_img_per_s", "input_img_per_s"):
      assert row[key] > 0, row
    assert row["compile_s"] >= 0
  assert rows[0]["params"] == 62_006  # the model that was asked for


def test_benchmark_table_and_bf16(benchmark_script, compile_cache):
  out = _stdout_of(
    benchmark_script.main,
    [
      "--models=lenet5",
      "--batch=8",
      "--steps=1",
      "--half_precision=true",
      f"--compilation_cache_dir={compile_cache}",
    ],
  )
  header, row = out.splitlines()
  assert header.split()[:3] == ["model", "batch", "img_per_s"]
  assert row.split()[0] == "lenet5" and "bfloat16" in row.split()


def test_benchmark_without_eval_times_only_the_train_step(benchmark_script, compile_cache):
  argv = ["--models=lenet5", "--batch=8", "--steps=1", "--noeval", "--json"]
  out = _stdout_of(benchmark_script.main, [*argv, f"--compilation_cache_dir={compile_cache}"])
  (row,) = [json.loads(line) for line in out.splitlines()]
  assert row["eval_img_per_s"] is None and row["img_per_s"] > 0


def test_compare_torch_reports_the_ratio_of_the_two_measurements(tmp_path, monkeypatch):
  """Both sides are stubbed: what is tested is that each round runs both
  back to back and divides JAX's images/s by PyTorch's."""
  fake_torch = tmp_path / "fake_torch.py"
  fake_torch.write_text(
    "import json, sys\n"
    "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
    "print(json.dumps({'model': args['models'], 'mode': args['modes'],"
    " 'img_per_s': 50.0}))\n"
  )
  compare = _script("compare_torch")
  run_for_real = compare._run_json_lines
  calls = []

  def fake_run(cmd, env=None):
    calls.append(cmd)
    if cmd[1] == str(fake_torch):
      return run_for_real(cmd, env)
    return [{"model": "lenet5", "img_per_s": 125.0, "dtype": "float32", "conv": "xla"}]

  monkeypatch.setattr(compare, "_run_json_lines", fake_run)
  out = _stdout_of(
    compare.main,
    [
      f"--torch_python={sys.executable}",
      f"--torch_script={fake_torch}",
      "--models=lenet5",
      "--rounds=2",
      "--steps=1",
    ],
  )
  measurements = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert [m["ratio"] for m in measurements] == [2.5, 2.5]
  assert "2.50, 2.50" in out and out.rstrip().endswith("2.50")
  # JAX then PyTorch in each round.
  assert [os.path.basename(c[1]) for c in calls] == ["benchmark.py", "fake_torch.py"] * 2


def test_compare_torch_gives_pytorch_the_chosen_allocator(monkeypatch):
  compare = _script("compare_torch")
  tunables = compare.host_memory.TUNABLES_ENV
  monkeypatch.setenv(tunables, f"glibc.malloc.arena_max=2:{compare.host_memory.TUNABLE}")
  default = compare.torch_environment("default")
  assert default[tunables] == "glibc.malloc.arena_max=2"
  huge = compare.torch_environment("huge_pages")
  assert huge[tunables] == f"glibc.malloc.arena_max=2:{compare.host_memory.TUNABLE}"
  monkeypatch.delenv(tunables)
  assert tunables not in compare.torch_environment("default")
  assert compare.torch_environment("huge_pages")[tunables] == compare.host_memory.TUNABLE
  with pytest.raises(ValueError, match="huge_pages"):
    compare.torch_environment("jemalloc")


@pytest.mark.parametrize("native_bf16,torch_mode", [(True, "bf16_cl"), (False, "fp32_cl")])
def test_compare_torch_runs_each_side_in_its_best_precision(monkeypatch, native_bf16, torch_mode):
  from cifar_jax import precision

  compare = _script("compare_torch")
  machine = precision.Machine("cpu", "avx2", native_bf16, None, True, native_bf16)
  monkeypatch.setattr(precision.Machine, "detect", classmethod(lambda cls: machine))
  # compare_torch sets ONEDNN_MAX_CPU_ISA in os.environ for its children. A
  # setenv first makes monkeypatch restore the variable's absence afterwards
  # (a delenv of an absent one records nothing), so no later test in this
  # process runs its subprocesses as on an AVX2 CPU.
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")
  monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
  calls = []

  def fake_run(cmd, env=None):
    calls.append((cmd, dict(os.environ if env is None else env)))
    return [{"model": "lenet5", "img_per_s": 10.0, "dtype": "float32", "conv": "onednn"}]

  monkeypatch.setattr(compare, "_run_json_lines", fake_run)
  out = _stdout_of(compare.main, ["--models=lenet5", "--rounds=1", "--isa=AVX2"])
  (jax_cmd, jax_env), (torch_cmd, torch_env) = calls
  assert "--half_precision=auto" in jax_cmd
  assert f"--modes={torch_mode}" in torch_cmd
  assert jax_env["ONEDNN_MAX_CPU_ISA"] == torch_env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
  assert json.loads(out.splitlines()[1])["torch_mode"] == torch_mode


# The keys of ../shared/bench/torch_reference.py's JSON lines.
TORCH_KEYS = {"model", "mode", "batch", "img_per_s", "step_s", "params", "torch", "threads"}


def test_torch_zoo_bench_times_a_zoo_network_as_torch_reference_does():
  """One mobilenet_v2 step at batch 2, in a Python where cifar_jax and JAX
  cannot be imported: the script needs torch, torchvision and timm only."""
  for name in ("torch", "torchvision", "timm"):
    if importlib.util.find_spec(name) is None:
      pytest.skip(f"{name} is not installed (the `reference` extra)")
  script = os.path.join(REPO_ROOT, "scripts", "torch_zoo_bench.py")
  argv = ["--models=mobilenet_v2", "--modes=fp32_cl", "--batch=2", "--steps=1"]
  without_project = (
    "import runpy, sys\n"
    "for name in ('cifar_jax', 'jax', 'flax', 'absl'):\n"
    "  sys.modules[name] = None  # import fails\n"
    f"sys.argv = [{script!r}] + {argv!r}\n"
    f"runpy.run_path({script!r}, run_name='__main__')\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", without_project], check=True, capture_output=True, text=True
  ).stdout
  (row,) = [json.loads(line) for line in out.splitlines()]
  assert set(row) == TORCH_KEYS
  assert (row["model"], row["mode"], row["batch"]) == ("mobilenet_v2", "fp32_cl", 2)
  assert row["params"] == 2_236_682  # our mobilenet_v2's (tests/reference_test.py)
  assert row["img_per_s"] > 0 and row["step_s"] > 0


def test_compare_torch_times_the_zoo_with_torch_zoo_bench(monkeypatch):
  """resnet18 and my_cnn with torch_reference.py's ports, the zoo's others
  with torch_zoo_bench.py's torchvision/timm networks at the rates of the
  model's config."""
  compare = _script("compare_torch")
  torch_calls = []

  def fake_run(cmd, env=None):
    if os.path.basename(cmd[1]) == "benchmark.py":
      return [{"img_per_s": 20.0, "dtype": "float32", "conv": "onednn"}]
    torch_calls.append(cmd)
    return [{"img_per_s": 10.0}]

  monkeypatch.setattr(compare, "_run_json_lines", fake_run)
  out = _stdout_of(
    compare.main,
    ["--models=resnet18,resnet50,my_cnn,vit_tiny,efficientnet_b0", "--rounds=1", "--steps=1"],
  )
  scripts = [os.path.basename(c[1]) for c in torch_calls]
  reference, zoo = "torch_reference.py", "torch_zoo_bench.py"
  assert scripts == [reference, zoo, reference, zoo, zoo]
  assert [r["torch_script"] for r in map(json.loads, out.splitlines()[1:6])] == scripts
  resnet50, vit, efficientnet = torch_calls[1], torch_calls[3], torch_calls[4]
  assert "--models=resnet50" in resnet50 and "--batch=128" in resnet50
  assert "--drop_path_rate=0.1" in vit  # configs/vit_tiny.py's, not timm's 0
  assert {"--drop_path_rate=0.2", "--dropout_rate=0.2"} <= set(efficientnet)  # drop_connect_rate
  assert not [a for a in torch_calls[0] if "rate" in a]  # torch_reference.py has no such flags
  assert out.rstrip().endswith("2.00")


def test_time_to_target_multiplies_each_sides_epochs_by_its_epoch_time(monkeypatch):
  """Both sides stubbed: JAX at 1,000 img/s needs speedrun_muon's own 7.5
  epochs of 50,000 images (375 s), or --jax_epochs of them; PyTorch at 800
  img/s 9.9 epochs (618.75 s)."""
  script = _script("time_to_target")
  calls = []

  def fake_run(cmd, env=None):
    calls.append(cmd)
    if os.path.basename(cmd[1]) == "benchmark.py":
      return [{"model": "speedrun", "img_per_s": 1000.0, "dtype": "float32"}]
    return [{"model": "speedrun", "img_per_s": 800.0}]

  monkeypatch.setattr(script.compare_torch, "_run_json_lines", fake_run)
  argv = ["--rounds=1", "--torch_python=python", "--torch_script=t.py"]
  out = _stdout_of(script.main, argv)
  (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert row["jax_epochs"] == 7.5  # configs/speedrun_muon.py's num_epochs
  assert row["jax_time_to_target_s"] == 375.0 and row["torch_time_to_target_s"] == 618.8
  assert row["ratio"] == pytest.approx(375 / 618.75, abs=1e-3)
  assert row["jax_batch"] == 2000  # speedrun_muon's own batch
  jax_cmd, torch_cmd = calls
  assert "--models=speedrun_muon" in jax_cmd and "--batch=2000" in jax_cmd
  assert "--models=speedrun" in torch_cmd and "--batch=1024" in torch_cmd
  assert out.rstrip().endswith("median 0.61")

  out = _stdout_of(script.main, argv + ["--jax_epochs=10"])
  (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert row["jax_time_to_target_s"] == 500.0 and out.rstrip().endswith("median 0.81")
