"""Which importer reads a weight file, and which source (framework + architecture family) it holds."""
from pathlib import Path

from cnnjax import models
from cnnjax.pretrained import keras_h5, torch_weights

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def file_format(path: str) -> str:
  """'keras_model' (model.save), 'keras_weights' (keras.applications / save_weights) or 'torch'."""
  path = str(path)
  if not Path(path).is_file():
    raise ValueError(f"no weight file at {path}")
  if path.endswith(".npz") or path.endswith(torch_weights.TORCH_SUFFIXES):
    return "torch"
  if path.endswith(".keras"):
    raise ValueError(f"{path}: the Keras 3 .keras format is not supported; save with model.save('x.h5')")
  with open(path, "rb") as file:
    if file.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
      raise ValueError(f"{path}: not an HDF5, .npz or PyTorch file (unknown format or corrupt)")
  with keras_h5.open_file(path) as file:
    if "model_config" in file.attrs:
      return "keras_model"
    if "layer_names" in file.attrs:
      return "keras_weights"
  raise ValueError(f"{path}: HDF5 file without Keras `model_config` or `layer_names`; Keras 3 `.weights.h5` files "
                   f"are not supported, save with model.save('x.h5')")


def source_of(path: str, allow_pickle: bool = False) -> str:
  """'keras:<arch>', 'keras:model' or 'torch:<family>' (keys of `preprocessing.MODES`)."""
  path = str(path)
  kind = file_format(path)
  if kind == "keras_model":
    return "keras:model"
  if kind == "keras_weights":
    with keras_h5.open_file(path) as file:
      return f"keras:{keras_h5.application_arch(keras_h5.layer_names(file), path)}"
  state = torch_weights.read_state_dict(path, allow_pickle)
  return f"torch:{torch_weights.family(torch_weights.torch_arch(state, path))}"


def load(path, arch=None, *, allow_pickle: bool = False, **options):
  """(model, variables) from a Keras HDF5 file or a PyTorch state dict; see `cnnjax.pretrained`.

  allow_pickle=True lets a PyTorch or .npz file hold pickled Python objects (refused by default: unpickling runs
  code); Keras HDF5 files are never unpickled.
  """
  path = str(path)
  kind = file_format(path)
  if arch is not None and arch not in models.names():
    raise ValueError(f"unknown arch={arch!r}; use one of {', '.join(models.names())} (or None to infer it)")
  if kind == "keras_model":
    if arch is not None:
      raise ValueError(f"{path}: a full Keras model file defines its own architecture; drop arch={arch!r}")
    return keras_h5.load_full_model(path, **options)
  if kind == "keras_weights":
    return keras_h5.load_application(path, arch, **options)
  return torch_weights.load_state_dict(path, arch, allow_pickle=allow_pickle, **options)
