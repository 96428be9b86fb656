"""Model registry: maps a model name to the constructor of its Flax module.

Every registered model follows one contract::

    model = get_model(name, num_classes=10, dtype=jnp.float32, **options)
    logits = model.apply(variables, images, train=False)   # (B, num_classes)

``images`` are float NHWC batches, already normalised. Variants of a family
are registered as ``functools.partial`` of one module, never as copies.
``bn_axis_name`` is passed by the pmap path so that BatchNorm statistics are
averaged over devices; models without BatchNorm accept and ignore it.

A model may also register a data-dependent initialisation with
``register_data_init(name, fn)``: ``fn(variables, images) -> variables`` gets
the freshly initialised variables and a sample of training images exactly as
``apply`` receives them (float NHWC, normalised) and returns variables of the
same tree, shapes and dtypes. ``run.create_train_state`` applies it when it
is given images; without them (templates for restoring a checkpoint) the
variables keep their ordinary initialisation, with the same shapes.

The families register themselves when their module is imported below.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any
from typing import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
DataInit = Callable[[Any, Any], Any]  # (variables, images) -> variables
_DATA_INITS: dict[str, DataInit] = {}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds ``constructor`` under ``name``; a name may be registered once."""
  if name in _REGISTRY:
    raise ValueError(f"model {name!r} is already registered")
  _REGISTRY[name] = constructor


def register_data_init(name: str, fn: DataInit) -> None:
  """Gives the registered model ``name`` a data-dependent initialisation."""
  if name not in _REGISTRY:
    raise ValueError(f"register model {name!r} before its data init")
  if name in _DATA_INITS:
    raise ValueError(f"model {name!r} already has a data init")
  _DATA_INITS[name] = fn


def get_data_init(name: str) -> DataInit | None:
  """The data-dependent initialisation of model ``name``, or None."""
  return _DATA_INITS.get(name)


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def takes(name: str, option: str) -> bool:
  """Whether the registered model ``name`` has the field ``option`` (e.g.
  ``attention``, which only the transformers have); False for unknown names,
  which `get_model` then reports."""
  constructor = _REGISTRY.get(name)
  if constructor is None:
    return False
  while isinstance(constructor, functools.partial):
    constructor = constructor.func
  return option in {f.name for f in dataclasses.fields(constructor)}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model ``name``; unknown names fail with a hint.
  List options (e.g. ``stage_sizes``) may be lists or tuples."""
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
      f"Unknown model.name {name!r}.{hint} Registered models: "
      f"{', '.join(model_names())}. List them with `python -m cifar_jax.models`."
    )
  # Lists arrive from JSON (config.json, trials.jsonl) and command lines;
  # flax module fields must be hashable.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  try:
    return _REGISTRY[name](**kwargs)
  except TypeError as e:
    raise ValueError(f"Model {name!r} does not accept these options {sorted(kwargs)}: {e}") from e


# Importing a family module registers its models.
from cifar_jax.models import cnn  # noqa: E402,F401
from cifar_jax.models import cspnet  # noqa: E402,F401
from cifar_jax.models import efficientnet  # noqa: E402,F401
from cifar_jax.models import lenet  # noqa: E402,F401
from cifar_jax.models import mobilenet  # noqa: E402,F401
from cifar_jax.models import resnet  # noqa: E402,F401
from cifar_jax.models import resnet_budget  # noqa: E402,F401
from cifar_jax.models import speedrun  # noqa: E402,F401
from cifar_jax.models import swin  # noqa: E402,F401
from cifar_jax.models import vit  # noqa: E402,F401
