"""The torchvision/timm networks at the CIFAR settings our models reproduce.

``build(name)`` is the PyTorch network that the registered model ``name``
equals at its registered defaults (32x32, 10 classes), for every zoo model
with a public reference (``NAMES``): torchvision's ResNet, MobileNetV2,
EfficientNet and Swin, timm's ViT, each changed as its model file's docstring
says. tests/reference_test.py proves the equality (logits of converted
weights, ``cifar_jax.models.torch_weights``) for one member per family and
the parameter counts for all of them; ``train_step_throughput`` times the
network's PyTorch training step as ../shared/bench/torch_reference.py times
its own models (scripts/torch_zoo_bench.py, scripts/compare_torch.py).

Needs the ``reference`` extra (torch, torchvision, timm), imported when a
network is built, so that ``NAMES`` can be read without them. This file
imports nothing else of the project and no JAX: scripts/torch_zoo_bench.py
loads it by path into a Python that has torch but not cifar_jax.

Stochastic depth and dropout default to our registered models' rates (the
references' own defaults, except timm's ViT, whose 0.0 drop-path rate is
0.1 here); ``build(name, drop_path_rate=..., dropout_rate=...)`` sets them,
as a config's ``model.drop_path_rate`` (EfficientNet's ``drop_connect_rate``)
and ``model.dropout_rate`` (Swin's ``drop_rate``) set ours. They change
training only, never eval logits.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
import warnings
from typing import Any
from typing import Callable

# Timing modes, as in ../shared/bench/torch_reference.py: fp32 (NCHW), fp32_cl
# (channels_last), bf16_cl (autocast bf16 + channels_last).
MODES = ("fp32", "fp32_cl", "bf16_cl")
WARMUP_STEPS = 2  # untimed steps before the timed ones, as torch_reference.py


def import_torchvision():
  """torchvision, also where its C++ ops do not load. PyPI's torchvision wheel
  is built against CUDA torch; beside the CPU torch its extension fails to load
  and its import then dies registering fake kernels for the missing detection
  ops (nms). The models need none of those ops, so that registration is
  skipped and the import retried. ImportError without torchvision."""
  if importlib.util.find_spec("torchvision") is None:
    raise ImportError("torchvision is not installed (the `reference` extra)")
  try:
    import torchvision
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType(
      "torchvision._meta_registrations"
    )
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "Failed to load image Python extension" and co.
      import torchvision
  return torchvision


def import_timm():
  """timm, after torchvision (which timm imports where it is installed)."""
  if importlib.util.find_spec("torchvision") is not None:
    import_torchvision()
  import timm

  return timm


def _tv(module: str):
  """A torchvision.models submodule, e.g. _tv("resnet")."""
  import_torchvision()
  return importlib.import_module(f"torchvision.models.{module}")


def cifar_resnet(build: Callable[..., Any], **options):
  """torchvision's ResNet (``build``: resnet18/34/50) with a 3x3 stride-1 stem
  conv and no max-pool."""
  import torch

  net = build(num_classes=10, **options)
  net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
  net.maxpool = torch.nn.Identity()
  return net


def cifar_mobilenet_v2(**options):
  """torchvision's table with the 24-channel stage at stride 1, and a stride-1 stem."""
  setting = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
  ]
  net = _tv("mobilenetv2").mobilenet_v2(
    num_classes=10, inverted_residual_setting=setting, **options
  )
  net.features[0][0].stride = (1, 1)
  return net


def cifar_efficientnet(build: Callable[..., Any], **options):
  """torchvision's EfficientNet (``build``: efficientnet_b0/b1) with stride 1
  in the stem and in stage 2's first depthwise conv."""
  net = build(num_classes=10, **options)
  net.features[0][0].stride = (1, 1)  # the stem
  net.features[2][0].block[1][0].stride = (1, 1)  # stage 2's first depthwise conv
  return net


def cifar_swin(depths, stochastic_depth_prob: float, **options):
  """torchvision's Swin v1 with 2x2 patches, 4x4 windows and one 2x2 window
  in stage 4 (swin_tiny: depths [2, 2, 6, 2], swin_small: [2, 2, 18, 2])."""
  net = _tv("swin_transformer").SwinTransformer(
    patch_size=[2, 2],
    embed_dim=96,
    depths=list(depths),
    num_heads=[3, 6, 12, 24],
    window_size=[4, 4],
    stochastic_depth_prob=stochastic_depth_prob,
    num_classes=10,
    **options,
  )
  # The last stage sees 2x2 tokens: one 2x2 window, as in the official code;
  # torchvision would zero-pad the map to its 4x4 window instead.
  for block in net.features[7]:
    block.attn.window_size = [2, 2]
    block.attn.shift_size = [0, 0]
    block.attn.define_relative_position_bias_table()
    block.attn.define_relative_position_index()
  return net


def timm_vit(name: str, **options):
  """timm's ViT ``name`` (e.g. vit_tiny_patch16_224), random weights."""
  return import_timm().create_model(name, pretrained=False, **options)


def cifar_vit(name: str, **options):
  """timm's ViT ``name`` with 4x4 patches on 32x32 images and 10 classes."""
  return timm_vit(name, patch_size=4, img_size=32, num_classes=10, **options)


def _resnet(depth: str):
  return lambda: cifar_resnet(getattr(_tv("resnet"), depth))


def _mobilenet_v2(dropout_rate):
  return cifar_mobilenet_v2(dropout=dropout_rate)


def _efficientnet(variant: str):
  return lambda drop_path_rate, dropout_rate: cifar_efficientnet(
    getattr(_tv("efficientnet"), variant),
    dropout=dropout_rate,
    stochastic_depth_prob=drop_path_rate,
  )


def _swin(depths):
  return lambda drop_path_rate, dropout_rate: cifar_swin(
    depths, drop_path_rate, dropout=dropout_rate
  )


def _vit(name: str):
  return lambda drop_path_rate, dropout_rate: cifar_vit(
    name, drop_path_rate=drop_path_rate, pos_drop_rate=dropout_rate, proj_drop_rate=dropout_rate
  )


# name -> (builder, its rates: our registered model's defaults). A rate a
# family does not have cannot be set (but 0 or None may be given).
_BUILDERS: dict[str, tuple[Callable[..., Any], dict[str, float]]] = {
  "resnet18": (_resnet("resnet18"), {}),
  "resnet34": (_resnet("resnet34"), {}),
  "resnet50": (_resnet("resnet50"), {}),
  "mobilenet_v2": (_mobilenet_v2, {"dropout_rate": 0.2}),
  "efficientnet_b0": (
    _efficientnet("efficientnet_b0"),
    {"drop_path_rate": 0.2, "dropout_rate": 0.2},
  ),
  "efficientnet_b1": (
    _efficientnet("efficientnet_b1"),
    {"drop_path_rate": 0.2, "dropout_rate": 0.2},
  ),
  "swin_tiny": (_swin([2, 2, 6, 2]), {"drop_path_rate": 0.2, "dropout_rate": 0.0}),
  "swin_small": (_swin([2, 2, 18, 2]), {"drop_path_rate": 0.3, "dropout_rate": 0.0}),
  "vit_tiny": (_vit("vit_tiny_patch16_224"), {"drop_path_rate": 0.1, "dropout_rate": 0.0}),
  "vit_small": (_vit("vit_small_patch16_224"), {"drop_path_rate": 0.1, "dropout_rate": 0.0}),
}
NAMES = tuple(sorted(_BUILDERS))


def build(name: str, *, drop_path_rate: float | None = None, dropout_rate: float | None = None):
  """The torch.nn.Module that registered model ``name`` equals (train mode,
  random weights). None keeps a rate at our model's default."""
  if name not in _BUILDERS:
    raise ValueError(
      f"no PyTorch reference for model {name!r}; there is one for {', '.join(NAMES)}"
    )
  builder, rates = _BUILDERS[name]
  rates = dict(rates)
  for key, value in (("drop_path_rate", drop_path_rate), ("dropout_rate", dropout_rate)):
    if value is None:
      continue
    if key in rates:
      rates[key] = float(value)
    elif value:
      raise ValueError(f"{name}'s reference has no {key} (asked for {value})")
  return builder(**rates)


def train_step_throughput(name: str, mode: str, batch: int, steps: int, **rates) -> dict:
  """Images/s of ``build(name, **rates)``'s training step (forward, backward,
  SGD update) on random data: ../shared/bench/torch_reference.py's ``bench``,
  step for step, and its JSON row."""
  import torch
  import torch.nn.functional as F

  if mode not in MODES:
    raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
  torch.manual_seed(0)
  model = build(name, **rates)
  opt = torch.optim.SGD(
    [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4
  )
  x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
  if mode.endswith("_cl"):
    model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
      loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  for _ in range(WARMUP_STEPS):
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  dt = (time.perf_counter() - t0) / steps
  return {
    "model": name,
    "mode": mode,
    "batch": batch,
    "img_per_s": round(batch / dt, 1),
    "step_s": round(dt, 4),
    "params": sum(p.numel() for p in model.parameters()),
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
  }
