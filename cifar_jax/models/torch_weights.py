"""Converts torchvision/timm state_dicts into this zoo's Flax variables.

One function per family, each ``(state_dict, template) -> variables``:

- ``resnet_variables``: torchvision ``resnet18/34/50`` -> ``resnet18/34/50``;
- ``mobilenet_v2_variables``: torchvision ``mobilenet_v2`` -> ``mobilenet_v2``;
- ``efficientnet_variables``: torchvision ``efficientnet_b0/b1`` ->
  ``efficientnet_b0/b1``;
- ``swin_variables``: torchvision ``swin_t/swin_s`` -> ``swin_tiny/swin_small``;
- ``vit_variables``: timm ``vit_tiny/small_patch16_224`` -> ``vit_tiny/small``.

``state_dict`` maps the reference's keys to arrays: a module's
``state_dict()`` works as it is (CPU tensors of a numpy dtype, read with
``np.asarray``; ``.float()`` bfloat16 ones first), so this module imports no
torch; only its callers do. ``template`` is the Flax
model's variables, or their shapes (``jax.eval_shape`` of ``model.init``): it
fixes the tree, shapes and dtypes of the result. The conversion is strict:
every torch key must be consumed and every Flax leaf set with its exact shape,
otherwise a ValueError lists each missing, left-over or misshapen entry (a
model built with other settings than the weights, e.g. a CIFAR stem for
ImageNet weights, fails there rather than half-converted).

Layouts: convolutions OIHW -> HWIO (depthwise (C, 1, kh, kw) -> (kh, kw, 1, C)),
linear (out, in) -> (in, out), BatchNorm weight/bias -> params scale/bias and
running_mean/var -> batch_stats mean/var (``num_batches_tracked`` has no
counterpart: flax's momentum is fixed), LayerNorm weight/bias -> scale/bias.
Images are NHWC here, NCHW there. tests/reference_test.py shows the converted
models' logits equal the references'.

Pretrained weights: build the model with the reference's ImageNet settings
(e.g. ``get_model("resnet50", num_classes=1000, stem="imagenet")``), convert
torchvision's weights into it, then replace what CIFAR needs changed (the
classifier) before fine-tuning.
"""

from __future__ import annotations

import re
from typing import Any
from typing import Iterable
from typing import Mapping

import jax
import numpy as np

from cifar_jax.models import swin

StateDict = Mapping[str, Any]  # torch key -> array-like (np.asarray reads it)
Path = tuple[str, ...]  # a Flax variable: (collection, module, ..., leaf)


class _Conversion:
  """Fills a copy of ``template`` from ``state_dict``, recording every key
  taken and every leaf set, so that ``finish`` can reject any left over."""

  def __init__(self, state_dict: StateDict, template: Any):
    self._torch = dict(state_dict)
    self._unused = set(self._torch)
    self._template = _flatten(template)
    self._out: dict[Path, np.ndarray] = {}
    self._errors: list[str] = []

  def has(self, path: Path) -> bool:
    return path in self._template

  def keys(self) -> Iterable[str]:
    return self._torch.keys()

  def modules(self, scope: Path, pattern: str) -> list[str]:
    """Names of the submodules of ``("params",) + scope`` that match
    ``pattern`` (whose first group is an index), in index order."""
    depth = 1 + len(scope)
    names = {
      p[depth] for p in self._template if p[:depth] == ("params",) + scope and len(p) > depth + 1
    }
    matched = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(pattern, n))]
    return [n for _, n in sorted(matched)]

  def take(self, key: str) -> np.ndarray | None:
    if key not in self._torch:
      self._errors.append(f"missing torch key {key!r}")
      return None
    self._unused.discard(key)
    return np.asarray(self._torch[key])

  def ignore(self, key: str) -> None:
    """Consumes ``key``, which has no Flax counterpart, when present."""
    self._unused.discard(key)

  def set(self, path: Path, value: np.ndarray | None) -> None:
    if value is None:  # its torch key was missing, already reported
      return
    if path not in self._template:
      self._errors.append(
        f"no flax variable {'/'.join(path)} for a torch value of shape {value.shape}"
      )
      return
    want = tuple(self._template[path].shape)
    if value.shape != want:
      self._errors.append(f"{'/'.join(path)}: flax shape {want}, torch gives {value.shape}")
      return
    if path in self._out:
      self._errors.append(f"flax variable {'/'.join(path)} set twice")
    self._out[path] = value

  def conv(self, scope: Path, prefix: str) -> None:
    """A Conv2d (with its bias where the Flax conv has one)."""
    weight = self.take(f"{prefix}.weight")
    self.set(("params", *scope, "kernel"), None if weight is None else weight.transpose(2, 3, 1, 0))
    if self.has(("params", *scope, "bias")):
      self.set(("params", *scope, "bias"), self.take(f"{prefix}.bias"))

  def dense(self, scope: Path, prefix: str) -> None:
    """A Linear (with its bias where the Flax dense has one)."""
    weight = self.take(f"{prefix}.weight")
    self.set(("params", *scope, "kernel"), None if weight is None else weight.T)
    if self.has(("params", *scope, "bias")):
      self.set(("params", *scope, "bias"), self.take(f"{prefix}.bias"))

  def batch_norm(self, scope: Path, prefix: str) -> None:
    for leaf, name in (("scale", "weight"), ("bias", "bias")):
      if self.has(("params", *scope, leaf)):  # the affine parts are optional
        self.set(("params", *scope, leaf), self.take(f"{prefix}.{name}"))
    self.set(("batch_stats", *scope, "mean"), self.take(f"{prefix}.running_mean"))
    self.set(("batch_stats", *scope, "var"), self.take(f"{prefix}.running_var"))
    self.ignore(f"{prefix}.num_batches_tracked")

  def layer_norm(self, scope: Path, prefix: str) -> None:
    self.set(("params", *scope, "scale"), self.take(f"{prefix}.weight"))
    self.set(("params", *scope, "bias"), self.take(f"{prefix}.bias"))

  def conv_norm(self, scope: Path, prefix: str) -> None:
    """A ``layers.ConvNormAct`` from torchvision's Conv2dNormActivation
    (``prefix.0`` the conv, ``prefix.1`` the BatchNorm)."""
    self.conv((*scope, "Conv_0"), f"{prefix}.0")
    self.batch_norm((*scope, "BatchNorm_0"), f"{prefix}.1")

  def error(self, message: str) -> None:
    self._errors.append(message)

  def finish(self, what: str) -> dict[str, Any]:
    errors = list(self._errors)
    errors += [f"torch key {k!r} not converted" for k in sorted(self._unused)]
    errors += [f"flax variable {'/'.join(p)} not set" for p in self._template if p not in self._out]
    if errors:
      raise ValueError(
        f"cannot convert the {what} state_dict ({len(errors)} problems):\n  " + "\n  ".join(errors)
      )
    tree: dict[str, Any] = {}
    for path, value in self._out.items():
      node = tree
      for name in path[:-1]:
        node = node.setdefault(name, {})
      # A copy: jax may alias the numpy view of a torch tensor, which torch
      # updates in place (running statistics) while jax assumes it immutable.
      node[path[-1]] = np.array(value, dtype=self._template[path].dtype, copy=True)
    return jax.device_put(tree)


def _flatten(template: Any) -> dict[Path, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(template)[0]
  return {tuple(k.key for k in path): leaf for path, leaf in leaves}


def resnet_variables(state_dict: StateDict, template: Any) -> dict[str, Any]:
  """torchvision ``resnet18/34/50`` -> ``resnet.ResNet`` (either stem)."""
  c = _Conversion(state_dict, template)
  c.conv(("Conv_0",), "conv1")
  c.batch_norm(("BatchNorm_0",), "bn1")
  torch_blocks = sorted(
    {
      (int(m.group(1)), int(m.group(2)))
      for k in c.keys()
      if (m := re.match(r"layer(\d+)\.(\d+)\.", k))
    }
  )
  flax_blocks = c.modules((), r"(?:BasicBlock|Bottleneck)_(\d+)")
  if len(torch_blocks) != len(flax_blocks):
    c.error(f"{len(torch_blocks)} torch blocks, {len(flax_blocks)} flax blocks")
  for (layer, index), block in zip(torch_blocks, flax_blocks):
    prefix = f"layer{layer}.{index}"
    convs = 3 if block.startswith("Bottleneck") else 2
    for i in range(convs):
      c.conv((block, f"Conv_{i}"), f"{prefix}.conv{i + 1}")
      c.batch_norm((block, f"BatchNorm_{i}"), f"{prefix}.bn{i + 1}")
    if c.has(("params", block, f"Conv_{convs}", "kernel")):  # projection shortcut
      c.conv((block, f"Conv_{convs}"), f"{prefix}.downsample.0")
      c.batch_norm((block, f"BatchNorm_{convs}"), f"{prefix}.downsample.1")
  c.dense(("Dense_0",), "fc")
  return c.finish("torchvision ResNet")


def mobilenet_v2_variables(state_dict: StateDict, template: Any) -> dict[str, Any]:
  """torchvision ``mobilenet_v2`` -> ``mobilenet.MobileNetV2``."""
  c = _Conversion(state_dict, template)
  c.conv_norm(("stem",), "features.0")
  blocks = c.modules((), r"InvertedResidual_(\d+)")
  for i, block in enumerate(blocks):
    prefix = f"features.{i + 1}.conv"
    # Expansion (when t != 1) and depthwise units, then the linear projection,
    # which torchvision spells as a bare conv and BatchNorm.
    units = c.modules((block,), r"ConvNormAct_(\d+)")
    for j, unit in enumerate(units[:-1]):
      c.conv_norm((block, unit), f"{prefix}.{j}")
    last = len(units) - 1
    c.conv((block, units[-1], "Conv_0"), f"{prefix}.{last}")
    c.batch_norm((block, units[-1], "BatchNorm_0"), f"{prefix}.{last + 1}")
  c.conv_norm(("last_conv",), f"features.{len(blocks) + 1}")
  c.dense(("Dense_0",), "classifier.1")
  return c.finish("torchvision MobileNetV2")


def efficientnet_variables(state_dict: StateDict, template: Any) -> dict[str, Any]:
  """torchvision ``efficientnet_b0/b1`` -> ``efficientnet.EfficientNet``."""
  c = _Conversion(state_dict, template)
  c.conv_norm(("stem",), "features.0")
  stages = sorted(
    {int(m.group(1)) for k in c.keys() if (m := re.match(r"features\.(\d+)\.\d+\.block\.", k))}
  )
  torch_blocks = sorted(
    {
      (int(m.group(1)), int(m.group(2)))
      for k in c.keys()
      if (m := re.match(r"features\.(\d+)\.(\d+)\.block\.", k))
    }
  )
  flax_blocks = c.modules((), r"MBConv_(\d+)")
  if len(torch_blocks) != len(flax_blocks):
    c.error(f"{len(torch_blocks)} torch blocks, {len(flax_blocks)} flax blocks")
  for (stage, index), block in zip(torch_blocks, flax_blocks):
    prefix = f"features.{stage}.{index}.block"
    # torchvision's block order: [expansion,] depthwise, [squeeze-excite,] projection.
    units = [(u, "conv") for u in c.modules((block,), r"ConvNormAct_(\d+)")]
    if c.has(("params", block, "SqueezeExcite_0", "Conv_0", "kernel")):
      units.insert(len(units) - 1, ("SqueezeExcite_0", "se"))
    for j, (unit, kind) in enumerate(units):
      if kind == "conv":
        c.conv_norm((block, unit), f"{prefix}.{j}")
      else:
        c.conv((block, unit, "Conv_0"), f"{prefix}.{j}.fc1")
        c.conv((block, unit, "Conv_1"), f"{prefix}.{j}.fc2")
  c.conv_norm(("head_conv",), f"features.{max(stages, default=0) + 1}")
  c.dense(("Dense_0",), "classifier.1")
  return c.finish("torchvision EfficientNet")


def swin_variables(state_dict: StateDict, template: Any) -> dict[str, Any]:
  """torchvision ``swin_t/swin_s`` (v1) -> ``swin.SwinTransformer``; each
  block's ``relative_position_index`` buffer must equal the Flax model's index."""
  c = _Conversion(state_dict, template)
  c.conv(("patch_embed",), "features.0.0")
  c.layer_norm(("patch_norm",), "features.0.2")
  blocks = c.modules((), r"stage(\d+)_block\d+")
  for stage in sorted({int(re.match(r"stage(\d+)_", b).group(1)) for b in blocks}):
    # torchvision's features: 0 the patch embedding, then stage, merge, stage, ...
    prefix = f"features.{2 * stage + 1}"
    for block in c.modules((), rf"stage{stage}_block(\d+)"):
      i = int(block.rsplit("block", 1)[1])
      p = f"{prefix}.{i}"
      c.layer_norm((block, "LayerNorm_0"), f"{p}.norm1")
      attn = (block, "WindowAttention_0")
      table = c.take(f"{p}.attn.relative_position_bias_table")
      c.set(("params", *attn, "relative_position_bias_table"), table)
      index = c.take(f"{p}.attn.relative_position_index")
      if table is not None and index is not None:
        window = (int(np.sqrt(table.shape[0])) + 1) // 2
        ours = swin.relative_position_index(window).reshape(-1)
        if not np.array_equal(index.reshape(-1), ours):
          c.error(f"{p}.attn.relative_position_index differs from the Flax model's")
      c.dense((*attn, "qkv"), f"{p}.attn.qkv")
      c.dense((*attn, "proj"), f"{p}.attn.proj")
      c.layer_norm((block, "LayerNorm_1"), f"{p}.norm2")
      c.dense((block, "TransformerMlp_0", "Dense_0"), f"{p}.mlp.0")
      c.dense((block, "TransformerMlp_0", "Dense_1"), f"{p}.mlp.3")
    if c.has(("params", f"stage{stage}_merge", "Dense_0", "kernel")):
      merge = f"features.{2 * stage + 2}"
      c.layer_norm((f"stage{stage}_merge", "LayerNorm_0"), f"{merge}.norm")
      c.dense((f"stage{stage}_merge", "Dense_0"), f"{merge}.reduction")
  c.layer_norm(("norm",), "norm")
  c.dense(("head",), "head")
  return c.finish("torchvision Swin")


def vit_variables(state_dict: StateDict, template: Any) -> dict[str, Any]:
  """timm ``vit_*_patch16_224`` (any patch size) -> ``vit.VisionTransformer``."""
  c = _Conversion(state_dict, template)
  c.conv(("patch_embed",), "patch_embed.proj")
  c.set(("params", "cls_token"), c.take("cls_token"))
  c.set(("params", "pos_embedding"), c.take("pos_embed"))
  for block in c.modules((), r"block(\d+)"):
    p = f"blocks.{int(block[len('block') :])}"
    c.layer_norm((block, "LayerNorm_0"), f"{p}.norm1")
    c.dense((block, "SelfAttention_0", "qkv"), f"{p}.attn.qkv")
    c.dense((block, "SelfAttention_0", "proj"), f"{p}.attn.proj")
    c.layer_norm((block, "LayerNorm_1"), f"{p}.norm2")
    c.dense((block, "TransformerMlp_0", "Dense_0"), f"{p}.mlp.fc1")
    c.dense((block, "TransformerMlp_0", "Dense_1"), f"{p}.mlp.fc2")
  c.layer_norm(("norm",), "norm")
  c.dense(("head",), "head")
  return c.finish("timm ViT")
