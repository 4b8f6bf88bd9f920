"""Keras HDF5 files: keras.applications weight files and full models saved with `model.save('x.h5')`.

Both keep, per layer, a group with a `weight_names` attribute listing its datasets (Keras 2: `conv1/kernel:0`,
Keras 3: `sequential/conv1/kernel`); the last path part names the weight's role. Applications files have the
root attribute `layer_names`; full models have `model_config` (JSON) and the weights under `model_weights`.
"""
import dataclasses
import json
import math
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import h5py
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.models import layers
from cnnjax.pretrained import convert

# Keras weight role -> (collection, cnnjax parameter).
_ROLES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "depthwise_kernel": ("params", "depthwise_kernel"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}


def _text(value) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def open_file(path: str) -> h5py.File:
  try:
    return h5py.File(path, "r")
  except OSError as error:
    raise ValueError(f"{path}: not a readable HDF5 file, it is truncated or corrupt "
                     f"({str(error).splitlines()[0]}); download or save it again") from None


def layer_names(group) -> List[str]:
  return [_text(name) for name in group.attrs["layer_names"]]


def layer_tensors(group, path: str) -> Dict[convert.Key, np.ndarray]:
  """Every weight of every layer under `group`, keyed by (collection, layer name, cnnjax parameter)."""
  tensors = {}
  for layer in layer_names(group):
    for weight_name in group[layer].attrs.get("weight_names", []):
      weight_name = _text(weight_name)
      role = weight_name.split("/")[-1].split(":")[0]
      if role not in _ROLES:
        raise ValueError(f"{path}: layer {layer!r} has a weight {weight_name!r} of a kind cnnjax cannot import")
      collection, param = _ROLES[role]
      try:
        tensors[(collection, layer, param)] = np.asarray(group[layer][weight_name], np.float32)
      except (OSError, KeyError) as error:
        raise ValueError(f"{path}: cannot read {layer}/{weight_name}, the file is truncated or corrupt "
                         f"({str(error).splitlines()[0]}); download or save it again") from None
  return tensors


# ---------------------------------------------------------------------------------------------------------------
# keras.applications weight files (vgg16/19, resnet50/101/152, mobilenet; with or without top).

_TOP_LAYERS = {"mobilenet": ("conv_preds",), "vgg": ("fc1", "fc2", "predictions"), "resnet": ("predictions",)}
_RESNET_BY_STAGE3_BLOCKS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}


def application_arch(names: List[str], path: str) -> str:
  """The cnnjax architecture whose Keras layer names the file holds."""
  names = set(names)
  if "conv_dw_1" in names:
    return "mobilenet"
  if "block1_conv1" in names:
    return "vgg19" if "block5_conv4" in names else "vgg16"
  if "conv2_block1_1_conv" in names:
    blocks = sum(f"conv4_block{index}_out" in names or f"conv4_block{index}_1_conv" in names
                 for index in range(1, 40))
    if blocks in _RESNET_BY_STAGE3_BLOCKS:
      return _RESNET_BY_STAGE3_BLOCKS[blocks]
  raise ValueError(f"{path}: unrecognised Keras applications weight file (expected the layer names of "
                   f"mobilenet, vgg16/19 or resnet50/101/152); pass arch= or convert it")


def _family(arch: str) -> str:
  return next(family for family in _TOP_LAYERS if arch.startswith(family))


def _top_layers(arch: str) -> Tuple[str, ...]:
  return _TOP_LAYERS[_family(arch)]


def has_top(names: List[str], arch: str) -> bool:
  return _top_layers(arch)[-1] in names


def load_application(path: str, arch: Optional[str] = None, *, num_classes: Optional[int] = None, seed: int = 0,
                     **options):
  """A keras.applications weight file -> (model, variables).

  With top, `num_classes` comes from the file. A `_notop` file gives the backbone: `num_classes` is then
  required and the head (`conv_preds` / `predictions`; VGG: a GAP head unless `head='flatten'`) is freshly
  initialised from `seed`, ready for transfer learning.
  """
  with open_file(path) as file:
    names = layer_names(file)
    found = application_arch(names, path)
    tensors = layer_tensors(file, path)
  arch = arch or found
  if arch not in models.names() or not any(arch.startswith(family) for family in _TOP_LAYERS) or \
      _family(arch) != _family(found):
    raise ValueError(f"{path}: holds {found} weights, which cannot be loaded as arch={arch!r}; use arch={found!r} "
                     f"or another file")
  family = _family(arch)
  top = has_top(names, arch)
  image_shape = (224, 224, 3)
  if family == "mobilenet":
    stem = tensors.get(("params", "conv1", "kernel"))
    if stem is not None:
      options.setdefault("alpha", stem.shape[-1] / 32)
  if top:
    head = tensors[("params", _top_layers(arch)[-1], "kernel")]
    if num_classes not in (None, head.shape[-1]):
      raise ValueError(f"{path}: the file's top has {head.shape[-1]} classes, not num_classes={num_classes}; "
                       f"drop num_classes (or use a _notop file for a new head)")
    num_classes = head.shape[-1]
    if family == "vgg":  # fc1 fixes the input size: 512 * (size / 32) ** 2 inputs
      side = math.isqrt(tensors[("params", "fc1", "kernel")].shape[0] // 512)
      image_shape = (32 * side, 32 * side, 3)
  else:
    if num_classes is None:
      raise ValueError(f"{path} has no top (a _notop file): pass num_classes= for the new, freshly "
                       f"initialised head")
    if family == "vgg":
      options.setdefault("head", "gap")
  model = models.create(arch, num_classes=num_classes, **options)
  variables = convert.assemble(model, image_shape, tensors, source=path, arch=arch,
                               fresh_layers=() if top else _top_layers(arch), seed=seed)
  return model, variables


# ---------------------------------------------------------------------------------------------------------------
# Full models saved with model.save('x.h5'): a Sequential (or a chain-shaped functional model) rebuilt in Flax.

SUPPORTED_LAYERS = ("InputLayer", "Conv2D", "MaxPooling2D", "AveragePooling2D", "Dense", "Dropout", "Flatten",
                    "Activation", "BatchNormalization", "GlobalAveragePooling2D")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One Keras layer: its class, its name (also the Flax module name) and the settings cnnjax uses."""
  kind: str
  name: str
  settings: Tuple[Tuple[str, Any], ...] = ()

  def get(self, key: str):
    return dict(self.settings)[key]


def _pair(value) -> Tuple[int, int]:
  return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _activation(config: dict, layer: str, path: str) -> str:
  kind = config.get("activation", "linear")
  if isinstance(kind, dict):  # Keras 3 may serialise a built-in activation as an object
    kind = kind.get("config", {}).get("name", kind.get("class_name"))
  if kind not in layers.ACTIVATIONS and kind != "softmax":
    raise ValueError(f"{path}: layer {layer!r} uses activation {kind!r}, which cnnjax does not support "
                     f"(supported: {', '.join(layers.ACTIVATIONS)}, and softmax as the last layer)")
  return kind


def _check_channels_last(config: dict, layer: str, path: str) -> None:
  if config.get("data_format", "channels_last") not in (None, "channels_last"):
    raise ValueError(f"{path}: layer {layer!r} is channels_first; cnnjax imports channels_last models only")


def _unsupported_setting(layer: str, setting: str, path: str):
  return ValueError(f"{path}: layer {layer!r} uses {setting}, which cnnjax does not support")


def parse_layer(class_name: str, config: dict, path: str) -> Optional[LayerSpec]:
  """The LayerSpec of one Keras layer config (None for InputLayer)."""
  name = config.get("name", class_name)
  if class_name not in SUPPORTED_LAYERS:
    raise ValueError(f"{path}: Keras layer {name!r} of type {class_name} is not supported; cnnjax imports "
                     f"{', '.join(SUPPORTED_LAYERS)}")
  if class_name == "InputLayer":
    return None
  if class_name == "Conv2D":
    _check_channels_last(config, name, path)
    if set(_pair(config.get("dilation_rate", 1))) != {1} or config.get("groups", 1) != 1:
      raise _unsupported_setting(name, "dilation or groups", path)
    return LayerSpec("conv", name, (("features", config["filters"]), ("kernel_size", _pair(config["kernel_size"])),
                                    ("strides", _pair(config.get("strides", 1))),
                                    ("padding", config.get("padding", "valid").upper()),
                                    ("use_bias", config.get("use_bias", True)),
                                    ("activation", _activation(config, name, path))))
  if class_name == "Dense":
    return LayerSpec("dense", name, (("features", config["units"]), ("use_bias", config.get("use_bias", True)),
                                     ("activation", _activation(config, name, path))))
  if class_name in ("MaxPooling2D", "AveragePooling2D"):
    _check_channels_last(config, name, path)
    window = _pair(config.get("pool_size", 2))
    return LayerSpec("pool", name, (("kind", "max" if class_name == "MaxPooling2D" else "average"),
                                    ("window", window), ("strides", _pair(config.get("strides") or window)),
                                    ("padding", config.get("padding", "valid").upper())))
  if class_name == "GlobalAveragePooling2D":
    _check_channels_last(config, name, path)
    return LayerSpec("global_average_pool", name, (("keepdims", config.get("keepdims", False)),))
  if class_name == "Flatten":
    _check_channels_last(config, name, path)
    return LayerSpec("flatten", name)
  if class_name == "Dropout":
    return LayerSpec("dropout", name, (("rate", config["rate"]),))
  if class_name == "Activation":
    return LayerSpec("activation", name, (("activation", _activation(config, name, path)),))
  axis = config.get("axis", -1)
  if (axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis) not in (-1, 3):
    raise _unsupported_setting(name, f"BatchNormalization over axis {axis}", path)
  return LayerSpec("batch_norm", name, (("epsilon", config.get("epsilon", 1e-3)),
                                        ("momentum", config.get("momentum", 0.99)),
                                        ("center", config.get("center", True)),
                                        ("scale", config.get("scale", True))))


def _drop_final_softmax(stack: List[LayerSpec], path: str) -> List[LayerSpec]:
  """Logits instead of probabilities: the last softmax (layer or Dense/Conv activation) is removed."""
  last = stack[-1]
  if last.kind == "activation" and last.get("activation") == "softmax":
    stack = stack[:-1]
  elif last.kind in ("dense", "conv") and last.get("activation") == "softmax":
    settings = tuple((k, "linear" if k == "activation" else v) for k, v in last.settings)
    stack = stack[:-1] + [dataclasses.replace(last, settings=settings)]
  for spec in stack:
    if ("activation", "softmax") in spec.settings:
      raise ValueError(f"{path}: layer {spec.name!r} applies softmax before the last layer; cnnjax imports "
                       f"softmax only as the model's output")
  return stack


def _inbound_names(nodes) -> List[List[str]]:
  """Names of the layers feeding each call of a layer (Keras 2 lists and Keras 3 `keras_history` dicts)."""
  def collect(item, found):
    if isinstance(item, dict):
      history = item.get("config", {}).get("keras_history") if item.get("class_name") == "__keras_tensor__" else None
      if history:
        found.append(history[0])
      else:
        for value in item.values():
          collect(value, found)
    elif isinstance(item, (list, tuple)):
      if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):  # Keras 2 [name, node, index, kw]
        found.append(item[0])
      else:
        for value in item:
          collect(value, found)
    return found
  return [collect(node, []) for node in nodes]


def _chain_layers(config: dict, path: str) -> List[dict]:
  """The layers of a functional model, checked to form a single chain input -> ... -> output."""
  layer_list = config["layers"]
  for previous, layer in zip(layer_list, layer_list[1:]):
    inputs = _inbound_names(layer.get("inbound_nodes", []))
    if inputs != [[previous["name"]]]:
      raise ValueError(f"{path}: layer {layer['name']!r} takes inputs {inputs} instead of the layer before it; "
                       f"cnnjax imports Sequential models and functional models that form one chain")
  return layer_list


def _input_shape(layer_configs: List[dict]) -> Optional[Tuple[int, ...]]:
  for layer in layer_configs:
    config = layer["config"]
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape:
      return tuple(shape[1:])
  return None


def parse_model_config(model_config: dict, path: str) -> Tuple[Tuple[LayerSpec, ...], Optional[tuple]]:
  """(layer specs, input shape or None) of a Keras `model_config`."""
  class_name, config = model_config["class_name"], model_config["config"]
  if class_name == "Sequential":
    layer_configs = config["layers"] if isinstance(config, dict) else config  # Keras 2.0 stored a bare list
  elif class_name in ("Model", "Functional"):
    layer_configs = _chain_layers(config, path)
  else:
    raise ValueError(f"{path}: a Keras {class_name} model cannot be imported; cnnjax imports Sequential models and "
                     f"chain-shaped functional models")
  stack = [spec for spec in (parse_layer(layer["class_name"], layer["config"], path) for layer in layer_configs)
           if spec is not None]
  if not stack:
    raise ValueError(f"{path}: the model has no layers")
  return tuple(_drop_final_softmax(stack, path)), _input_shape(layer_configs)


def _build(spec: LayerSpec, train: bool, dtype, axis_name) -> nn.Module:
  if spec.kind == "conv":
    return layers.Conv(spec.get("features"), spec.get("kernel_size"), spec.get("strides"), spec.get("padding"),
                       use_bias=spec.get("use_bias"), activation=spec.get("activation"), dtype=dtype,
                       name=spec.name)
  if spec.kind == "dense":
    return layers.Dense(spec.get("features"), use_bias=spec.get("use_bias"), activation=spec.get("activation"),
                        dtype=dtype, name=spec.name)
  if spec.kind == "pool":
    return layers.Pool(spec.get("kind"), spec.get("window"), spec.get("strides"), spec.get("padding"),
                       name=spec.name)
  if spec.kind == "global_average_pool":
    return layers.GlobalAveragePool(spec.get("keepdims"), name=spec.name)
  if spec.kind == "flatten":
    return layers.Flatten(name=spec.name)
  if spec.kind == "dropout":
    return layers.dropout(spec.get("rate"), train, name=spec.name)
  if spec.kind == "activation":
    return layers.Activation(spec.get("activation"), name=spec.name)
  # layers.batch_norm with the file's momentum and center/scale flags.
  return nn.BatchNorm(use_running_average=not train,
                      momentum=spec.get("momentum"), epsilon=spec.get("epsilon"),
                      use_bias=spec.get("center"), use_scale=spec.get("scale"), axis_name=axis_name, dtype=dtype,
                      param_dtype=jnp.float32, name=spec.name)


class SequentialFromKeras(nn.Module):
  """A Keras Sequential (or chain-shaped functional) model rebuilt from its config, one module per Keras layer.

  Modules carry the Keras layer names, so weights live at `variables['params'][<keras name>]`. The model returns
  logits: a softmax at the output (last Dense/Conv2D activation or a final Activation layer) is dropped; apply
  `jax.nn.softmax` to get Keras's probabilities.
  """
  stack: Tuple[LayerSpec, ...]
  dtype: Any = None
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    dtype = layers.compute_dtype(self.dtype)
    outputs = layers.model_inputs(images, dtype)
    modules = [_build(spec, train, dtype, self.axis_name) for spec in self.stack]
    layers.check_input_size(outputs, "this Keras model", layers.spatial_ops(modules))
    for module in modules:
      outputs = module(outputs)
    return outputs.astype(jnp.float32)


_FULL_MODEL_OPTIONS = ("dtype", "axis_name", "input_shape")


def load_full_model(path: str, **options):
  """A Keras full-model HDF5 (`model.save('x.h5')`) -> (SequentialFromKeras, variables)."""
  unknown = sorted(set(options) - set(_FULL_MODEL_OPTIONS))
  if unknown:
    raise ValueError(f"{path}: Keras full-model files take no option(s) {', '.join(unknown)}; valid options: "
                     f"{', '.join(_FULL_MODEL_OPTIONS)}")
  with open_file(path) as file:
    try:
      model_config = json.loads(_text(file.attrs["model_config"]))
    except (KeyError, ValueError) as error:
      raise ValueError(f"{path}: unreadable model_config ({error}); the file is corrupt") from None
    if "model_weights" not in file:
      raise ValueError(f"{path}: the file has a model_config but no model_weights group; save it with "
                       f"model.save('x.h5') (include the weights)")
    tensors = layer_tensors(file["model_weights"], path)
  stack, input_shape = parse_model_config(model_config, path)
  input_shape = tuple(options.pop("input_shape", None) or input_shape or ())
  if len(input_shape) != 3 or None in input_shape:
    raise ValueError(f"{path}: the model's input shape {input_shape or 'is not stored'} is not a fixed (H, W, C); "
                     f"pass input_shape=(height, width, channels)")
  model = SequentialFromKeras(stack, **options)
  return model, convert.assemble(model, input_shape, tensors, source=path, arch="the Keras model")
