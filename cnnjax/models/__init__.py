"""Model zoo: `create(name, num_classes=..., **options)`, `names()`, `summary(model, input_shape)`.

Every model is a flax.linen Module: `model.apply(variables, images_nhwc, train=False) -> float32 logits`;
training: `model.apply(variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key})`.
Layers carry Keras's names, so parameters live at `variables['params'][<keras layer name>]`.
"""
import dataclasses
from typing import Any, Dict, Tuple

import flax.linen as nn

from cnnjax.models import alexnet, introspect, layers, lenet, mobilenet, resnet, simple, vgg
from cnnjax.models.summary import summary

_COMMON = ("dtype", "axis_name")
_SEQUENTIAL = ("activation", "pooling", "head", "dropout", "batch_norm") + _COMMON


@dataclasses.dataclass(frozen=True)
class _Entry:
  module: type
  architecture: Dict[str, Any]  # fields fixed by the name
  options: Tuple[str, ...]  # fields a user may set


def _registry() -> Dict[str, _Entry]:
  entries = {
      name: _Entry(simple.SimpleCNN, {"arch": name},
                   _SEQUENTIAL + (("conv_dropout",) if any(isinstance(spec, layers.DropoutSpec)
                                                           for spec in plan.stack) else ()))
      for name, plan in simple.PLANS.items()}
  entries["lenet5"] = _Entry(lenet.LeNet5, {}, _SEQUENTIAL)
  entries["alexnet"] = _Entry(alexnet.AlexNet, {}, _SEQUENTIAL + ("conv_dropout",))
  entries.update({f"vgg{depth}": _Entry(vgg.VGG, {"depth": depth}, _SEQUENTIAL) for depth in vgg.CONVS_PER_BLOCK})
  for name, architecture in resnet.ARCHITECTURES.items():
    v1_5 = ("stride_on_3x3",) if architecture["block"] == "bottleneck" else ()
    entries[name] = _Entry(resnet.ResNet, architecture, ("activation", "head", "dropout") + v1_5 + _COMMON)
  entries["mobilenet"] = _Entry(mobilenet.MobileNet, {}, ("alpha", "dropout", "activation") + _COMMON)
  return entries


_REGISTRY = _registry()


def names() -> list:
  """Every architecture `create` knows."""
  return list(_REGISTRY)


def options(name: str) -> Tuple[str, ...]:
  """The options `create(name, ...)` accepts besides num_classes."""
  return _entry(name).options


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def create(name: str, *, num_classes: int, **model_options) -> nn.Module:
  """The architecture `name` for `num_classes` classes; `model_options` as listed by `options(name)`, where
  None means the architecture's default.

  Unknown names, unknown options and invalid option values raise a one-line ValueError.
  """
  entry = _entry(name)
  model_options = {option: value for option, value in model_options.items() if value is not None}
  unknown = sorted(set(model_options) - set(entry.options))
  if unknown:
    raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; valid options: {', '.join(entry.options)}")
  model = entry.module(num_classes=num_classes, **entry.architecture, **model_options)
  layers.check_options(model, name)
  return model


__all__ = ["create", "names", "options", "summary", "layers", "introspect"]
