"""PyTorch state dicts -> cnnjax variables: CIFAR ResNets (akamaster/pytorch_resnet_cifar10) and torchvision
VGG and ResNet, from `.npz` twins (numpy arrays under the state-dict keys) or, when torch is installed, from
`.pth`/`.pt`/`.th` files read with `torch.load(weights_only=True)`.

Neither reader unpickles: a pickle can run any code while it loads, so a file holding Python objects besides
tensors and plain containers (a whole pickled model, an .npz with object arrays, or a malicious file) is refused.
`allow_pickle=True` opts in, for files from a source you trust.

PyTorch layouts: conv weights OIHW (-> HWIO), linear weights (out, in) (-> (in, out)), BatchNorm
`weight, bias, running_mean, running_var` (-> scale, bias, mean, var). torchvision's VGG flattens its last feature
map in (C, H, W) order, cnnjax (like Keras) in (H, W, C): the rows of `classifier.0.weight` are permuted to match.
Imported models keep cnnjax's Keras names (`conv5_block3_out`, `block5_conv3`, ...).
"""
import math
import re
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np

from cnnjax import models
from cnnjax.models import resnet, vgg
from cnnjax.pretrained import convert

TORCH_SUFFIXES = (".pth", ".pt", ".th")
TORCH_BN_EPSILON = 1e-5
KERAS_BN_EPSILON = 1e-3  # cnnjax.models.layers.batch_norm's default, used by VGG


def _strip(state: dict) -> Dict[str, np.ndarray]:
  """Drops DataParallel's `module.` prefix and BatchNorm's step counters."""
  return {key[len("module."):] if key.startswith("module.") else key: value
          for key, value in state.items() if not key.endswith("num_batches_tracked")}


def _pickle_refused(path: str, what: str) -> ValueError:
  return ValueError(f"{path}: refused to unpickle {what}: unpickling can run arbitrary code, so weight files are read "
                    f"as plain arrays only (weights_only=True, allow_pickle=False); if you trust the file, pass "
                    f"allow_pickle=True, or re-save it as a state dict of tensors")


def _read_npz(path: str, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=allow_pickle) as arrays:
      return {key: np.asarray(arrays[key], np.float32) for key in arrays.files}
  except ValueError as error:
    if "Object arrays" in str(error):
      raise _pickle_refused(path, "its object arrays") from None
    if "pickled data" in str(error):  # neither a zip nor an .npy: numpy would take it for a pickle
      raise ValueError(f"{path}: not a readable .npz file, it is truncated or corrupt (or a pickle, which is not "
                       "unpickled unless allow_pickle=True); download or save it again") from None
    raise ValueError(f"{path}: not a readable .npz file, it is truncated or corrupt ({error}); "
                     f"download or save it again") from None
  except (OSError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"{path}: not a readable .npz file, it is truncated or corrupt ({error}); "
                     f"download or save it again") from None


def _read_torch(path: str, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f"{path}: reading PyTorch files needs torch (pip install torch), or convert it to .npz with "
                     f"np.savez(out, **{{k: v.numpy() for k, v in state_dict.items()}})") from None
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as error:  # torch raises many types for bad files  # pylint: disable=broad-except
    pickled = re.search(r"GLOBAL ([\w.]+)", str(error))  # weights_only met a class or function to import
    if pickled:
      raise _pickle_refused(path, f"{pickled.group(1)} (the file holds Python objects besides tensors, such as "
                            "a pickled model)") from None
    raise ValueError(f"{path}: torch.load failed, the file is truncated, corrupt or not a state dict "
                     f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
  state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state, dict):
    raise ValueError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict; save model.state_dict()")
  return {key: value.detach().cpu().float().numpy() for key, value in state.items() if hasattr(value, "numpy")}


class _Reads(dict):
  """A state dict that records which tensors the conversion read."""

  def __init__(self, *args):
    super().__init__(*args)
    self.read = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)

  def get(self, key, default=None):
    if key in self:
      self.read.add(key)
    return super().get(key, default)


def read_state_dict(path: str, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
  """{key: float32 array} of a .npz or PyTorch file, `module.` prefixes and BatchNorm step counters dropped.

  allow_pickle=True lets the file hold pickled Python objects, which run code when loaded: trusted files only.
  """
  state = _read_npz(path, allow_pickle) if path.endswith(".npz") else _read_torch(path, allow_pickle)
  return _strip(state)


# ---------------------------------------------------------------------------------------------------------------
# Which architecture a state dict holds.

def _count(state, pattern: str) -> int:
  return len({match.group(1) for key in state for match in [re.match(pattern, key)] if match})


def _resnet_name(stage_sizes: Tuple[int, ...], block: str, stem: str) -> Optional[str]:
  return next((name for name, arch in resnet.ARCHITECTURES.items()
               if arch["block"] == block and tuple(arch["stage_sizes"]) == stage_sizes
               and arch.get("stem", "imagenet") == stem), None)


def torch_arch(state: Dict[str, np.ndarray], path: str) -> str:
  """The cnnjax architecture of a state dict: CIFAR ResNet, torchvision ResNet or torchvision VGG."""
  if "linear.weight" in state and "layer1.0.conv1.weight" in state:
    stages = tuple(_count(state, rf"layer{stage}\.(\d+)\.") for stage in (1, 2, 3))
    name = _resnet_name(stages, "basic", "cifar")
  elif "fc.weight" in state and "layer1.0.conv1.weight" in state:
    stages = tuple(_count(state, rf"layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4))
    name = _resnet_name(stages, "bottleneck" if "layer1.0.conv3.weight" in state else "basic", "imagenet")
  elif "features.0.weight" in state and "classifier.0.weight" in state:
    name = f"vgg{len(_vgg_convs(state)) + 3}"
    name = name if name in models.names() else None
  else:
    name = None
  if name is None:
    raise ValueError(f"{path}: unrecognised state dict (keys {', '.join(list(state)[:3])}, ...); cnnjax imports "
                     f"CIFAR ResNets and torchvision ResNet/VGG, pass arch= for a matching layout")
  return name


def family(arch: str) -> str:
  if arch.startswith("vgg"):
    return "vgg"
  return "resnet_cifar" if resnet.ARCHITECTURES.get(arch, {}).get("stem") == "cifar" else "resnet"


# ---------------------------------------------------------------------------------------------------------------
# Layout conversion.

def _conv(weight: np.ndarray) -> np.ndarray:
  return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _bn(state, prefix: str, layer: str, tensors: dict) -> None:
  for torch_name, key in (("weight", ("params", "scale")), ("bias", ("params", "bias")),
                          ("running_mean", ("batch_stats", "mean")), ("running_var", ("batch_stats", "var"))):
    if f"{prefix}.{torch_name}" in state:
      tensors[(key[0], layer, key[1])] = state[f"{prefix}.{torch_name}"]


def _resnet_tensors(state, head: str, conv_bias: bool) -> dict:
  """layer{s}.{i}.conv{k} -> conv{s+1}_block{i+1}_{k}_conv, downsample.{0,1} -> _0_conv/_0_bn, `head` -> predictions.

  torchvision convolutions have no bias; cnnjax's ImageNet ResNet has one (Keras's layout), set to zero.
  """
  tensors = {}

  def conv(prefix, layer):
    weight = state.get(f"{prefix}.weight")
    if weight is not None:
      tensors[("params", layer, "kernel")] = _conv(weight)
      if conv_bias:
        tensors[("params", layer, "bias")] = np.zeros(weight.shape[0], np.float32)

  conv("conv1", "conv1_conv")
  _bn(state, "bn1", "conv1_bn", tensors)
  for key in state:
    match = re.match(r"layer(\d+)\.(\d+)\.(conv|bn|downsample\.)(\d+)\.weight$", key)
    if not match:
      continue
    stage, index, kind, number = int(match.group(1)), int(match.group(2)), match.group(3), int(match.group(4))
    block = f"conv{stage + 1}_block{index + 1}"
    prefix = key[:-len(".weight")]
    if kind == "conv":
      conv(prefix, f"{block}_{number}_conv")
    elif kind == "bn":
      _bn(state, prefix, f"{block}_{number}_bn", tensors)
    elif number == 0:
      conv(prefix, f"{block}_0_conv")
    else:
      _bn(state, prefix, f"{block}_0_bn", tensors)
  if f"{head}.weight" in state:
    tensors[("params", "predictions", "kernel")] = state[f"{head}.weight"].T
    tensors[("params", "predictions", "bias")] = state[f"{head}.bias"]
  return tensors


def _vgg_convs(state) -> list:
  """Indices of the convolutions in `features`, in order (4-d weights)."""
  return sorted(int(match.group(1)) for key in state for match in [re.match(r"features\.(\d+)\.weight$", key)]
                if match and state[key].ndim == 4)


def _vgg_tensors(state, depth: int) -> dict:
  """features.{j} -> block{b}_conv{i} (+ `_bn` for vgg*_bn), classifier.{0,3,6} -> fc1, fc2, predictions."""
  tensors = {}
  names = [spec.name for spec in vgg.vgg_stack(depth) if isinstance(spec, vgg.ConvSpec)]
  for name, index in zip(names, _vgg_convs(state)):
    tensors[("params", name, "kernel")] = _conv(state[f"features.{index}.weight"])
    tensors[("params", name, "bias")] = state[f"features.{index}.bias"]
    _bn(state, f"features.{index + 1}", f"{name}_bn", tensors)
  for torch_name, name in (("classifier.0", "fc1"), ("classifier.3", "fc2"), ("classifier.6", "predictions")):
    if f"{torch_name}.weight" in state:
      tensors[("params", name, "kernel")] = state[f"{torch_name}.weight"].T
      tensors[("params", name, "bias")] = state[f"{torch_name}.bias"]
  fc1 = tensors.get(("params", "fc1", "kernel"))
  if fc1 is not None:
    tensors[("params", "fc1", "kernel")] = chw_rows_to_hwc(fc1, channels=vgg.WIDTHS[-1])
  return tensors


def chw_rows_to_hwc(kernel: np.ndarray, channels: int) -> np.ndarray:
  """Reorders the rows of a dense kernel `(C*H*W, out)` that follows an NCHW flatten for an NHWC flatten."""
  side = math.isqrt(kernel.shape[0] // channels)
  if channels * side * side != kernel.shape[0]:
    raise ValueError(f"a dense layer after the flatten has {kernel.shape[0]} inputs, not {channels} x a square map")
  out = kernel.shape[1]
  return kernel.reshape(channels, side, side, out).transpose(1, 2, 0, 3).reshape(-1, out)


def _require(state, key: str, path: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f"{path}: missing tensor {key!r}; the state dict is incomplete")
  return state[key]


def load_state_dict(path: str, arch: Optional[str] = None, *, allow_pickle: bool = False, **options):
  """A PyTorch state dict (.npz twin, or .pth/.pt/.th with torch) -> (model, variables)."""
  state = _Reads(read_state_dict(path, allow_pickle))
  found = torch_arch(state, path)
  arch = arch or found
  if arch not in models.names() or family(arch) != family(found):
    raise ValueError(f"{path}: holds a {found} state dict, which cannot be loaded as arch={arch!r}; "
                     f"use arch={found!r} or another file")
  if family(arch) == "vgg":
    fc1 = _require(state, "classifier.0.weight", path)
    side = math.isqrt(fc1.shape[1] // vgg.WIDTHS[-1])
    image_shape = (32 * side, 32 * side, 3)  # torchvision pools adaptively to 7x7; cnnjax's VGG expects 224x224
    batch_norm = any(key.endswith("running_mean") for key in state)
    model = models.create(arch, num_classes=_require(state, "classifier.6.weight", path).shape[0],
                          batch_norm=batch_norm, **options)
    tensors = _vgg_tensors(state, model.depth)
    convert.shift_bn_epsilon(tensors, TORCH_BN_EPSILON, KERAS_BN_EPSILON)
  else:
    head = "linear" if family(arch) == "resnet_cifar" else "fc"
    if family(arch) == "resnet" and resnet.ARCHITECTURES[arch]["block"] == "bottleneck":
      options.setdefault("stride_on_3x3", True)  # torchvision's ResNet is "v1.5"
    model = models.create(arch, num_classes=_require(state, f"{head}.weight", path).shape[0], **options)
    tensors = _resnet_tensors(state, head, model.conv_bias)
    convert.shift_bn_epsilon(tensors, TORCH_BN_EPSILON, model.bn_epsilon)
    image_shape = (32, 32, 3) if family(arch) == "resnet_cifar" else (224, 224, 3)
  variables = convert.assemble(model, image_shape, tensors, source=path, arch=arch)
  unused = sorted(set(state) - state.read)
  if unused:  # layers the architecture lacks: loading the rest would silently drop them
    raise ValueError(f"{path}: tensors {', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''} have no place in "
                     f"{arch}; the file holds another architecture (or one with extra layers): check arch=")
  return model, variables
