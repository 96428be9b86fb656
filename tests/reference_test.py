"""The zoo computes what its public reference implementations compute.

Each family is compared with its reference: torchvision's ResNet, MobileNetV2,
EfficientNet and Swin, timm's ViT. The reference gets random weights (every
BatchNorm and LayerNorm, running statistics and bias included, so that a
mis-mapped one shows), ``cifar_jax.models.torch_weights`` converts them, and
both run in fp32 on one random batch:

- in the ImageNet settings (224x224, 1000 classes, the stock reference);
- in the CIFAR settings (our registered defaults, 32x32, 10 classes) against
  the reference modified as each model file's docstring says
  (``cifar_jax.models.torch_reference``).

Logits must agree to ``TOLERANCE`` times the largest reference logit (see
``assert_logits_equal``). Skipped without torch, torchvision and timm (the
``reference`` extra).
"""

import ast
import importlib.util
import inspect

import jax
import numpy as np
import pytest

from cifar_jax import models
from cifar_jax.models import summary
from cifar_jax.models import torch_reference
from cifar_jax.models import torch_weights
from cifar_jax.models.torch_reference import cifar_resnet
from cifar_jax.models.torch_reference import timm_vit

torch = pytest.importorskip("torch")
if importlib.util.find_spec("torchvision") is None:
  pytest.skip("torchvision is not installed", allow_module_level=True)
torchvision = torch_reference.import_torchvision()
timm = pytest.importorskip("timm")

from torchvision.models import efficientnet as tv_efficientnet  # noqa: E402
from torchvision.models import mobilenetv2 as tv_mobilenet  # noqa: E402
from torchvision.models import resnet as tv_resnet  # noqa: E402
from torchvision.models import swin_transformer as tv_swin  # noqa: E402

# fp32 logits of two implementations differ by summation order only: at most
# 3e-6 of their scale here (1.2e-6 for ViT-S at 224). 1e-4 leaves room for
# other CPUs' kernels, and any wrong weight, padding, eps or layer is far above
# it (one stem weight off by one standard deviation: 5e-3).
TOLERANCE = 1e-4
IMAGENET_BATCH = 2  # at 224x224: the big models run in seconds on 2 cores
CIFAR_BATCH = 4
# Small batches make PyTorch's unbiased running variance, n / (n - 1) times the
# batch's, differ most from the biased one: n = 2 * 4 * 4 = 32 in the last stage.
TRAIN_BATCH = 2


def randomize_(module, seed: int = 0):
  """Gives every tensor that its init leaves (nearly) constant random values:
  norm scales/biases, BatchNorm statistics, zero biases, tiny class tokens."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if not tensor.is_floating_point() or tensor.numel() == 0:
        continue
      head = tensor.flatten()[:1024]  # enough to tell random from constant, and cheap
      if head.numel() > 1 and float(head.std()) > 1e-3:
        continue  # already random
      ones = name.endswith("running_var") or float(tensor.mean()) > 0.5  # scales
      noise = torch.rand(tensor.shape, generator=generator)
      tensor.copy_(0.5 + noise if ones else 0.2 * (noise - 0.5))
  return module.eval()


def torch_images(batch: int, size: int, seed: int = 1):
  return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


_CACHE = {}


def cached(kind, model, *shapes, build):
  """build() once per model configuration (flax modules compare by repr): the
  resnet18 tests share their templates and executables."""
  key = (kind, repr(model), shapes)
  if key not in _CACHE:
    _CACHE[key] = build()
  return _CACHE[key]


def template(model, size: int):
  """The variables' shapes, allocating nothing."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  return cached(
    "template",
    model,
    size,
    build=lambda: jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x),
  )


def state_dict_of(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def compiled(kind, model, fn, *args):
  # Each executable runs once or twice: LLVM's optimisations would cost more
  # than they save.
  return cached(
    kind,
    model,
    *[np.shape(a) for a in jax.tree.leaves(args)],
    build=lambda: (
      jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    ),
  )


def flax_logits(model, variables, images, train: bool = False):
  """Logits (and the updated batch_stats in train mode) of NCHW torch images."""
  x = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1))
  if not train:
    forward = lambda v, x: model.apply(v, x, train=False)
    return np.asarray(compiled("eval", model, forward, variables, x)(variables, x))
  forward = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  logits, state = compiled("train", model, forward, variables, x)(variables, x)
  return np.asarray(logits), state["batch_stats"]


def assert_logits_equal(ours, reference):
  """Equal within TOLERANCE of the logits' scale: an absolute bound (a relative
  one fails on logits near zero) that follows each model's logit magnitude."""
  reference = np.asarray(reference)
  scale = float(np.max(np.abs(reference)))
  assert scale > 1e-3, "degenerate reference logits"
  np.testing.assert_allclose(ours, reference, rtol=0, atol=TOLERANCE * scale)


def compare(reference, model, convert, size: int, batch: int):
  """Converts ``reference``'s weights into ``model`` and compares eval logits."""
  randomize_(reference)
  variables = convert(state_dict_of(reference), template(model, size))
  images = torch_images(batch, size)
  with torch.no_grad():
    expected = reference(images).numpy()
  assert_logits_equal(flax_logits(model, variables, images), expected)
  # The conversion is strict, so the parameter counts agree too.
  assert sum(p.numel() for p in reference.parameters()) == sum(
    np.size(leaf) for leaf in jax.tree.leaves(variables["params"])
  )


# ImageNet settings: the stock reference, our model with its ImageNet options.
IMAGENET_STRIDES = dict(stem_stride=2, strides=(1, 2, 2, 2, 1, 2, 1))
IMAGENET = {
  "resnet18": (tv_resnet.resnet18, dict(stem="imagenet"), torch_weights.resnet_variables),
  "resnet34": (tv_resnet.resnet34, dict(stem="imagenet"), torch_weights.resnet_variables),
  "resnet50": (tv_resnet.resnet50, dict(stem="imagenet"), torch_weights.resnet_variables),
  "mobilenet_v2": (
    tv_mobilenet.mobilenet_v2,
    IMAGENET_STRIDES,
    torch_weights.mobilenet_v2_variables,
  ),
  "efficientnet_b0": (
    tv_efficientnet.efficientnet_b0,
    IMAGENET_STRIDES,
    torch_weights.efficientnet_variables,
  ),
  "efficientnet_b1": (
    tv_efficientnet.efficientnet_b1,
    IMAGENET_STRIDES,
    torch_weights.efficientnet_variables,
  ),
  "swin_tiny": (tv_swin.swin_t, dict(patch_size=4, window_size=7), torch_weights.swin_variables),
  "swin_small": (tv_swin.swin_s, dict(patch_size=4, window_size=7), torch_weights.swin_variables),
  "vit_tiny": (
    lambda: timm_vit("vit_tiny_patch16_224"),
    dict(patch_size=16),
    torch_weights.vit_variables,
  ),
  "vit_small": (
    lambda: timm_vit("vit_small_patch16_224"),
    dict(patch_size=16),
    torch_weights.vit_variables,
  ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_settings_equal_the_reference(name):
  build, options, convert = IMAGENET[name]
  torch.manual_seed(0)
  compare(
    build(), models.get_model(name, num_classes=1000, **options), convert, 224, IMAGENET_BATCH
  )


# CIFAR settings: our registered defaults against the reference changed as
# each model file's docstring says (cifar_jax/models/torch_reference.py).
# One member per family: its siblings differ from it in widths and depths
# only, which the ImageNet comparisons and the parameter counts below cover.
CIFAR = {
  "resnet18": torch_weights.resnet_variables,
  "mobilenet_v2": torch_weights.mobilenet_v2_variables,
  "efficientnet_b0": torch_weights.efficientnet_variables,
  "swin_tiny": torch_weights.swin_variables,
  "vit_tiny": torch_weights.vit_variables,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CIFAR))
def test_cifar_settings_equal_the_modified_reference(name):
  torch.manual_seed(0)
  compare(torch_reference.build(name), models.get_model(name), CIFAR[name], 32, CIFAR_BATCH)


@pytest.mark.parametrize("name", torch_reference.NAMES)
def test_cifar_references_have_our_models_parameter_counts(name):
  """Every reference, the siblings of the families' compared members included,
  has its registered model's parameter count (trainable, BatchNorm statistics
  excluded on both sides)."""
  torch.manual_seed(0)
  reference = torch_reference.build(name)
  ours = summary.count_params(summary.abstract_variables(models.get_model(name)))
  assert sum(p.numel() for p in reference.parameters()) == ours


def test_cifar_reference_builder_rejects_unknown_models_and_rates():
  assert set(torch_reference.NAMES) <= set(models.model_names())
  with pytest.raises(ValueError, match="no PyTorch reference for model 'lenet5'"):
    torch_reference.build("lenet5")
  with pytest.raises(ValueError, match="resnet18's reference has no drop_path_rate"):
    torch_reference.build("resnet18", drop_path_rate=0.1)
  # Our models' rates by default, the given ones otherwise (train mode only).
  vit = torch_reference.build("vit_tiny")
  assert vit.training and vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
  swin = torch_reference.build("swin_tiny", drop_path_rate=0.1)
  assert swin.features[7][-1].stochastic_depth.p == pytest.approx(0.1)


def test_resnet18_train_mode_and_running_statistics_equal_torch():
  """One training-mode forward: batch-statistics logits and the updated
  running statistics (momentum 0.1 == flax 0.9, eps 1e-5, running_var from the
  unbiased batch variance) equal torch's."""
  torch.manual_seed(0)
  reference = randomize_(cifar_resnet(tv_resnet.resnet18))
  model = models.get_model("resnet18")
  variables = torch_weights.resnet_variables(state_dict_of(reference), template(model, 32))
  images = torch_images(TRAIN_BATCH, 32)
  with torch.no_grad():
    expected = reference.train()(images).numpy()
  logits, batch_stats = flax_logits(model, variables, images, train=True)
  assert_logits_equal(logits, expected)
  # Equal to ~1e-6; flax's own update (biased variance) misses by ~7e-3.
  updated = torch_weights.resnet_variables(state_dict_of(reference), template(model, 32))
  flat_ours = jax.tree_util.tree_flatten_with_path(batch_stats)[0]
  flat_theirs = dict(jax.tree_util.tree_flatten_with_path(updated["batch_stats"])[0])
  assert len(flat_ours) == len(flat_theirs) == 2 * 20  # mean and var of 20 BatchNorms
  for path, ours in flat_ours:
    theirs = np.asarray(flat_theirs[path])
    np.testing.assert_allclose(
      ours,
      theirs,
      rtol=TOLERANCE,
      atol=TOLERANCE * float(np.max(np.abs(theirs))),
      err_msg=jax.tree_util.keystr(path),
    )
  # The running statistics really moved (the comparison is not of initial values).
  before = variables["batch_stats"]["BatchNorm_0"]["var"]
  assert np.max(np.abs(np.asarray(batch_stats["BatchNorm_0"]["var"]) - before)) > 1e-2


def test_a_perturbed_weight_breaks_the_equality():
  """The comparison is sharp enough to see one weight of the stem off by 0.05
  (about one standard deviation of that kernel): ~5e-3 of the logits' scale."""
  torch.manual_seed(0)
  reference = randomize_(cifar_resnet(tv_resnet.resnet18))
  model = models.get_model("resnet18")
  state_dict = state_dict_of(reference)
  state_dict["conv1.weight"] = state_dict["conv1.weight"].copy()
  state_dict["conv1.weight"][0, 0, 1, 1] += 0.05
  variables = torch_weights.resnet_variables(state_dict, template(model, 32))
  images = torch_images(CIFAR_BATCH, 32)
  with torch.no_grad():
    expected = reference(images).numpy()
  with pytest.raises(AssertionError):
    assert_logits_equal(flax_logits(model, variables, images), expected)


def test_converters_reject_missing_left_over_and_misshapen_weights():
  torch.manual_seed(0)
  state_dict = state_dict_of(cifar_resnet(tv_resnet.resnet18))
  cifar = template(models.get_model("resnet18"), 32)
  with pytest.raises(ValueError, match="torch key 'extra.weight' not converted"):
    torch_weights.resnet_variables({**state_dict, "extra.weight": np.zeros(3)}, cifar)
  incomplete = {k: v for k, v in state_dict.items() if k != "layer2.0.bn1.running_var"}
  with pytest.raises(ValueError, match="missing torch key 'layer2.0.bn1.running_var'"):
    torch_weights.resnet_variables(incomplete, cifar)
  # ImageNet weights (7x7 stem, 1000 classes) do not fit the CIFAR model.
  imagenet = state_dict_of(tv_resnet.resnet18())
  with pytest.raises(ValueError, match=r"Conv_0/kernel: flax shape \(3, 3, 3, 64\)"):
    torch_weights.resnet_variables(imagenet, cifar)
  # Nor do resnet34's blocks fit resnet18.
  with pytest.raises(ValueError, match="16 torch blocks, 8 flax blocks"):
    torch_weights.resnet_variables(state_dict_of(cifar_resnet(tv_resnet.resnet34)), cifar)


def _imported_modules(module, top_level_only=False):
  tree = ast.parse(inspect.getsource(module))
  nodes = tree.body if top_level_only else list(ast.walk(tree))
  imported = [alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names]
  imported += [node.module for node in nodes if isinstance(node, ast.ImportFrom)]
  return [m.split(".")[0] for m in imported]


def test_the_converters_import_no_torch():
  """Only callers that hold a state_dict need torch."""
  imported = _imported_modules(torch_weights)
  assert not [m for m in imported if m in ("torch", "torchvision", "timm")]


def test_the_reference_builders_import_neither_the_project_nor_jax():
  """scripts/torch_zoo_bench.py loads them by path into a Python with torch
  only; compare_torch reads their NAMES without torch."""
  imported = _imported_modules(torch_reference)
  assert not [m for m in imported if m in ("cifar_jax", "jax", "flax", "numpy", "absl")]
  top_level = _imported_modules(torch_reference, top_level_only=True)
  assert not [m for m in top_level if m in ("torch", "torchvision", "timm")]
