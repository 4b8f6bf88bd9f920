"""Pretrained layers into a model built for another task: the official Keras `_notop` files, and copying every
layer whose tensors fit, by (Keras) layer name.

`keras_weights(arch, alpha=..., image_size=...)` downloads the file for `keras:<arch>` once into
~/.cache/cnnjax/weights (or $CNNJAX_CACHE/weights); `load_source(path, num_classes)` reads a weight file as
(model, variables, layers it really holds); `merge_layers` copies the layers whose shapes match, all-or-nothing per
layer, so a new head keeps its fresh initialisation.
"""
import os
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from cnnjax.pretrained import keras_h5, registry

KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_ARCHS = ("mobilenet", "vgg16", "resnet50")
# Fields of two zoo models that may differ while the weights still mean the same thing.
_HEAD_FIELDS = ("num_classes", "head", "dropout", "activation", "dtype", "axis_name", "parent", "name")
_MOBILENET_ALPHAS = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}


def cache_dir() -> Path:
  return Path(os.environ.get("CNNJAX_CACHE") or Path.home() / ".cache" / "cnnjax") / "weights"


def keras_file(arch: str, *, alpha: Optional[float] = None, image_size: int = 224) -> Tuple[str, str]:
  """(file name, URL) of the official Keras `_notop` ImageNet weights for `keras:<arch>`.

  Args:
    arch: one of KERAS_ARCHS.
    alpha: MobileNet's width multiplier (None = 1.0).
    image_size: MobileNet's input side; Keras publishes 128, 160, 192 and 224 (others get the 224 file).
  """
  if arch == "vgg16":
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return name, f"{KERAS_URL}vgg16/{name}"
  if arch == "resnet50":
    name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return name, f"{KERAS_URL}resnet/{name}"
  if arch == "mobilenet":
    alpha = alpha or 1.0
    if alpha not in _MOBILENET_ALPHAS:
      raise ValueError(f"Keras publishes MobileNet weights for alpha {sorted(_MOBILENET_ALPHAS)}, not {alpha}; set "
                       f"config.model_options.alpha")
    size = image_size if image_size in (128, 160, 192, 224) else 224
    name = f"mobilenet_{_MOBILENET_ALPHAS[alpha]}_{size}_tf_no_top.h5"
    return name, f"{KERAS_URL}mobilenet/{name}"
  raise ValueError(f"unknown Keras weights 'keras:{arch}'; choose one of "
                   f"{', '.join('keras:' + name for name in KERAS_ARCHS)}, or give a weight file")


def fetch(name: str, url: str) -> str:
  """The cached file `name`, downloaded from `url` on first use; a cut-short download leaves nothing behind."""
  path = cache_dir() / name
  if path.is_file():
    return str(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f"{name}.tmp-{os.getpid()}")
  try:
    urllib.request.urlretrieve(url, temporary)
  except OSError:
    temporary.unlink(missing_ok=True)
    raise ValueError(f"cannot download {name} (offline?): fetch {url} and put it at {path}") from None
  os.replace(temporary, path)
  return str(path)


def keras_weights(arch: str, *, alpha: Optional[float] = None, image_size: int = 224) -> str:
  """The local path of `keras:<arch>`'s weights, downloaded once."""
  return fetch(*keras_file(arch, alpha=alpha, image_size=image_size))


def load_source(path: str, num_classes: int):
  """(model, variables, the layers the file really holds, or None for all) of a weight file."""
  if registry.file_format(path) == "keras_weights":
    with keras_h5.open_file(path) as file:
      names = keras_h5.layer_names(file)
      if not keras_h5.has_top(names, keras_h5.application_arch(names, path)):
        # A _notop file: load() adds a fresh head, which must not count as pretrained.
        model, variables = registry.load(path, num_classes=num_classes)
        return model, variables, set(names)
  model, variables = registry.load(path)
  return model, variables, None


def check_same_architecture(source_model, model, source: str) -> None:
  """A one-line ValueError unless `source_model` is `model`'s architecture (heads may differ)."""
  if type(source_model) is not type(model):
    raise ValueError(f"{source} holds a {type(source_model).__name__} but config.model builds a "
                     f"{type(model).__name__}; choose the matching config.model")
  for field in source_model.__dataclass_fields__:
    if field in _HEAD_FIELDS:
      continue
    ours, theirs = getattr(model, field, None), getattr(source_model, field, None)
    if ours != theirs:
      raise ValueError(f"{source} was trained with {field}={theirs!r} but the config's model has {ours!r}; "
                       f"set config.model_options.{field} (or choose the matching config.model)")


def _fits(ours: Dict, theirs: Dict) -> bool:
  return all(theirs[c] is not None and jax.tree_util.tree_structure(theirs[c]) == jax.tree_util.tree_structure(ours[c])
             and all(a.shape == b.shape for a, b in zip(jax.tree.leaves(theirs[c]), jax.tree.leaves(ours[c])))
             for c in ours)


def merge_layers(variables: Dict, source: Dict, allowed: Optional[set] = None) -> Tuple[Dict, list, list]:
  """`variables` with every layer whose tensors all have the same shapes in `source` replaced by the source's.

  Args:
    variables: the model's fresh variables, {collection: {layer: tree}}.
    source: the pretrained variables, same layout.
    allowed: only these layers may be copied (None: any).
  Returns:
    (merged variables, loaded layer names, new layer names); a layer is all-or-nothing.
  """
  loaded, new = [], []
  merged = {collection: dict(layer_vars) for collection, layer_vars in variables.items()}
  layer_names = list(dict.fromkeys(name for layer_vars in variables.values() for name in layer_vars))
  for layer in layer_names:
    ours = {collection: variables[collection][layer] for collection in variables if layer in variables[collection]}
    theirs = {collection: source.get(collection, {}).get(layer) for collection in ours}
    if not ((allowed is None or layer in allowed) and _fits(ours, theirs)):
      new.append(layer)
      continue
    loaded.append(layer)
    for collection in ours:
      merged[collection][layer] = jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), theirs[collection],
                                               ours[collection])
  return merged, loaded, new
