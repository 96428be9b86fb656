"""Model statistics: trainable parameter counts and forward FLOPs.

``params`` counts the leaves of the 'params' collection only (BatchNorm
running statistics are not trainable and are left out). It comes from
``jax.eval_shape`` of ``init``, so no weights are allocated.

``flops`` is XLA's own estimate, from the cost analysis of the compiled
eval-mode forward pass of ONE 32x32x3 image on the current backend. XLA counts
a multiply-add as 2 FLOPs, also counts elementwise ops (activations,
normalisation, softmax...), and does NOT count products with a convolution's
zero padding. So the numbers are not exactly 2 x the multiply-accumulate
counts of tools such as fvcore or thop: padded convolutions on small maps come
out lower (resnet18: XLA 0.97 GFLOPs against 2 x 0.556 GMACs = 1.11), and
values may differ slightly between backends and XLA versions.

``layer_table`` is flax's ``nn.tabulate`` of a model on one 32x32x3 image:
one row per module with its input and output shapes, its FLOPs (the same XLA
count, of that module alone) and its parameters and BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cifar_jax import input_pipeline
from cifar_jax import models


def count_params(variables_or_params: Any) -> int:
  """Number of trainable parameters.

  Accepts the full variables dict of ``model.init`` (only its 'params'
  collection is counted) or a params tree. Leaves may be arrays or
  ``jax.ShapeDtypeStruct`` (as returned by ``jax.eval_shape``).
  """
  tree = variables_or_params
  if isinstance(tree, Mapping) and "params" in tree:
    tree = tree["params"]
  return int(sum(int(leaf.size) for leaf in jax.tree.leaves(tree)))


def abstract_variables(model, batch_size: int = 1):
  """Shapes/dtypes of ``model.init`` on a (batch_size, 32, 32, 3) input."""
  x = jax.ShapeDtypeStruct((batch_size,) + input_pipeline.IMAGE_SHAPE, jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)


def forward_flops(model, variables=None) -> float:
  """XLA's FLOP count of the compiled eval forward pass on one image."""
  if variables is None:
    variables = abstract_variables(model)
  x = jax.ShapeDtypeStruct((1,) + input_pipeline.IMAGE_SHAPE, jnp.float32)
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  # The executable is never run, so skip LLVM's optimisations: the HLO (whose
  # cost is analysed) is the same and compilation is about twice as fast.
  cost = (
    fwd.lower(variables, x)
    .compile(compiler_options={"xla_backend_optimization_level": 0})
    .cost_analysis()
  )
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  if not cost or "flops" not in cost:
    raise RuntimeError("XLA's cost analysis reported no 'flops' on this backend")
  return float(cost["flops"])


def model_stats(name: str, flops: bool = True, **kwargs: Any) -> dict:
  """``{"name", "params", "flops"}`` of registered model ``name``.

  ``kwargs`` go to the model's constructor. ``flops`` (XLA's count for one
  32x32x3 image, eval mode) needs a compilation; pass ``flops=False`` to skip
  it, which gives ``"flops": None``.
  """
  model = models.get_model(name, **kwargs)
  variables = abstract_variables(model)
  return {
    "name": name,
    "params": count_params(variables),
    "flops": forward_flops(model, variables) if flops else None,
  }


def layer_table(
  name: str, flops: bool = True, depth: int | None = None, width: int = 160, **kwargs: Any
) -> str:
  """flax's per-module table of registered model ``name`` on one 32x32x3
  image in eval mode (see the module docstring). ``depth`` limits how deep
  submodules are listed (None: all); ``width`` is the table's in characters."""
  import flax.linen as nn

  model = models.get_model(name, **kwargs)
  x = jnp.zeros((1,) + input_pipeline.IMAGE_SHAPE, jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  # No colours: the table is read in files and pipes as often as in terminals.
  console = {"width": width, "force_terminal": False, "color_system": None}
  table = nn.tabulate(model, rngs, depth=depth, compute_flops=flops, console_kwargs=console)(
    x, train=False
  )
  variables = abstract_variables(model)
  if set(variables) == {"params"}:
    return table.rstrip()
  # tabulate's total counts BatchNorm statistics as parameters; say what is trained.
  return (
    f"{table.rstrip()}\nTrainable parameters (BatchNorm statistics left out): "
    f"{count_params(variables):,}"
  )
