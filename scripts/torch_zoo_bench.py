"""PyTorch CPU training throughput of the zoo's torchvision/timm networks.

    python scripts/torch_zoo_bench.py --models=resnet50,vit_tiny --modes=fp32_cl --batch=128

What ../shared/bench/torch_reference.py does for its own models (resnet18,
my_cnn, speedrun), for the networks that our zoo models equal at the CIFAR
settings (cifar_jax/models/torch_reference.py: resnet18/34/50, mobilenet_v2,
efficientnet_b0/b1, swin_tiny/small, vit_tiny/small): the same timed step
(forward, backward, SGD update on random data, after 2 warm-up steps), the
same modes (fp32, fp32_cl, bf16_cl) and one JSON line per (model, mode) with
the same keys:

    {"model": "resnet50", "mode": "fp32_cl", "batch": 128, "img_per_s": 21.3, ...}

Runs in any Python with torch, torchvision and timm (the `reference` extra,
or a venv with just those): the library file is loaded by its path, without
cifar_jax, JAX or absl. scripts/compare_torch.py runs it with --torch_python.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(HERE, "..", "cifar_jax", "models", "torch_reference.py")


def load_library():
  """cifar_jax/models/torch_reference.py, without importing cifar_jax."""
  spec = importlib.util.spec_from_file_location("cifar_jax_torch_reference", LIBRARY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0,vit_tiny,swin_tiny")
  ap.add_argument("--modes", default="fp32,fp32_cl,bf16_cl")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument(
    "--drop_path_rate", type=float, default=None, help="Stochastic depth (default: our model's)."
  )
  ap.add_argument(
    "--dropout_rate", type=float, default=None, help="Dropout (default: our model's)."
  )
  a = ap.parse_args(argv)
  library = load_library()
  rates = dict(drop_path_rate=a.drop_path_rate, dropout_rate=a.dropout_rate)
  for name in a.models.split(","):
    for mode in a.modes.split(","):
      row = library.train_step_throughput(name, mode, a.batch, a.steps, **rates)
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
