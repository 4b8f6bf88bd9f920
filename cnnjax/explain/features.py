"""Layers by name for the explainers: resolving a name (or its Keras 2.1 alias), the default Grad-CAM layer,
capturing outputs, and gradients at a layer's output; plus the check of images every explainer makes, with
one-line errors (targets are `targets`').

Listing and capturing are `cnnjax.models.introspect`'s (by `nn.intercept_methods`, so any Linen module works);
the backprop modifier is `backprop`'s.
"""
import functools
import re
from typing import Dict, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.explain import backprop
from cnnjax.explain import targets as targets_lib
from cnnjax.models import fusion, introspect
from cnnjax.models.introspect import LayerInfo, layer_infos, num_classes, static_model, unwrap_model


def apply_logits(model, variables, images):
  """The model's logits in inference mode (the only mode explainers use)."""
  return model.apply(variables, images, train=False)


def forward_logits(model, variables, images):
  """`apply_logits` for the passes explainers never differentiate (the perturbed copies of occlusion, RISE, the
  ablations, KernelSHAP, Score-CAM and the metrics): traced under `fusion.inference_fusion`, so that on CPU with
  oneDNN each convolution + BatchNorm + add + ReLU chain is one call (1.19x resnet20's forward, no gain on
  ResNet50: bench/forward_bound.py); the same values to float rounding."""
  with fusion.inference_fusion():
    return apply_logits(model, variables, images)


# Keras 2.1 ResNet50 names (the tutorials' `res5c_branch2c`) -> Keras 2.2+ names, which the zoo uses.
_OLD_RESNET = re.compile(r"^(res|bn)([2-5])([a-z])_branch(1|2[abc])$")


def _keras21_alias(name: str) -> Optional[str]:
  if name == "conv1":
    return "conv1_conv"
  if name == "bn_conv1":
    return "conv1_bn"
  match = _OLD_RESNET.match(name)
  if not match:
    return None
  kind, stage, block, branch = match.groups()
  index = "0" if branch == "1" else str("abc".index(branch[1]) + 1)
  suffix = "conv" if kind == "res" else "bn"
  return f"conv{stage}_block{ord(block) - ord('a') + 1}_{index}_{suffix}"


def _choices(names: Sequence[str], limit: int = 60) -> str:
  shown = ", ".join(names[-limit:])
  return shown if len(names) <= limit else f"... {shown} (last {limit} of {len(names)})"


def resolve_layer(model, input_shape, layer: Optional[str], *, spatial: bool = False) -> LayerInfo:
  """The layer called `layer` (or its Keras 2.1 alias); with `layer=None`, the default Grad-CAM layer.

  `spatial=True` requires a (B, H, W, C) output, as Grad-CAM needs.
  """
  if layer is not None and not isinstance(layer, str):
    raise ValueError(f"layer must be a layer name (a str, see cnnjax.explain.layer_names); got {layer!r}")
  infos = layer_infos(model, input_shape)
  by_name = {info.name: info for info in infos}
  if layer is None:
    return default_cam_layer(infos)
  info = by_name.get(layer) or by_name.get(_keras21_alias(layer) or "")
  if info is None:
    raise ValueError(f"unknown layer {layer!r}; valid layers: {_choices(list(by_name))}")
  if spatial and len(info.shape) != 4:
    valid = [i.name for i in infos if len(i.shape) == 4]
    raise ValueError(f"layer {info.name!r} outputs shape {info.shape}, not a (B, H, W, C) feature map; "
                     f"choose one of: {_choices(valid)}")
  return info


# Layers that only resample or pass through their input: Grad-CAM is sharper on the layer that feeds them
# (VGG16's `block5_conv3`, not `block5_pool`), as the Keras and pytorch-grad-cam examples choose.
_PASS_THROUGH = ("Pool", "Dropout")
_COLLAPSE_SPACE = ("GlobalAveragePool", "GlobalMaxPool", "Flatten")


def default_cam_layer(infos: Sequence[LayerInfo]) -> LayerInfo:
  """The last spatial feature map before the network first collapses space (global pooling or flatten).

  MobileNet's 1x1 `conv_preds` after global pooling is therefore never chosen; pooling and dropout layers
  are skipped in favour of the activation they consume.
  """
  spatial = []
  for info in infos:
    if len(info.shape) != 4 or info.kind in _COLLAPSE_SPACE:  # MobileNet's pooling keeps a 1x1 map
      break
    spatial.append(info)
  if not spatial:
    raise ValueError("the model has no layer with a (B, H, W, C) output before its first flat one; "
                     "Grad-CAM needs a spatial feature map")
  informative = [info for info in spatial if info.kind not in _PASS_THROUGH]
  return (informative or spatial)[-1]


def probe_gradients(model, variables, images, targets: targets_lib.Targets, layer: LayerInfo,
                    modifier: Optional[str] = None):
  """(A (B, h, w, c), d score_k / dA (B, K, h, w, c)) for the layer's output A, from one forward pass.

  The gradient is taken with respect to a zero probe added to A (`introspect.capture_outputs`), never with
  respect to the parameters or the images, so JAX linearises only the part of the network above the layer: the
  cost stays near one forward pass whatever the depth, and K targets add K pullbacks of that part only.
  """
  backprop.check_reachable(model, images.shape, modifier, images.dtype)
  probe = jnp.zeros((images.shape[0], *layer.shape[1:]), jnp.float32)

  def logits_and_features(probe):
    with backprop.modified_backprop(modifier):
      logits, captured = introspect.capture_outputs(model, variables, images, [layer.name], {layer.name: probe})
    return logits, captured[layer.name]

  _, gradients, features = targets_lib.pullback(logits_and_features, probe, targets, has_aux=True)
  return features, gradients


@functools.partial(jax.jit, static_argnames=("model", "names"))
def _activations(model, variables, images, names):
  return introspect.capture_outputs(unwrap_model(model), variables, images, names)[1]


def check_images(images, what: str = "images") -> jax.Array:
  """A floating (B, H, W, C) batch, or a one-line error saying how to make one."""
  if not hasattr(images, "ndim") or not hasattr(images, "dtype"):
    images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"{what} must be a (B, H, W, C) batch; got shape {tuple(images.shape)} "
                     "(add a batch axis with images[None] for a single image)")
  if images.shape[0] == 0:
    raise ValueError(f"{what} is an empty batch (shape {tuple(images.shape)}); give at least one image")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{what} must be floating point, preprocessed as the model was trained; got dtype "
                     f"{images.dtype} (convert uint8 with the model's preprocessing, or .astype(float32))")
  return jnp.asarray(images)


def activations(model, variables, images, layers) -> Dict[str, jax.Array]:
  """{name: output} of the named layers (a name or a list of names) for a batch, in inference mode."""
  images = check_images(images)
  names = (layers,) if isinstance(layers, str) else tuple(layers)
  resolved = tuple(resolve_layer(model, images.shape[1:], name).name for name in names)
  outputs = _activations(static_model(model), variables, images, resolved)
  return {name: outputs[real] for name, real in zip(names, resolved)}


def with_one_line_errors(explainer):
  """`explainer` with flax's errors for variables that do not fit the model on these images (images of another
  size or channel count than the model was trained on, or another model's variables) as a one-line ValueError."""
  @functools.wraps(explainer)
  def wrapped(model, variables, *args, **kwargs):
    try:
      return explainer(model, variables, *args, **kwargs)
    except (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError,
            flax.errors.ScopeCollectionNotFound) as error:
      images = args[0] if args and hasattr(args[0], "shape") else None
      where = f" on images of shape {tuple(images.shape[1:])}" if images is not None else ""
      reason = str(error).split(" (https://")[0].rstrip(". ")
      raise ValueError(f"the variables do not fit {type(unwrap_model(model)).__name__}{where}: {reason}; give "
                       "images of the size and channels the model was trained on (and this model's own "
                       "variables)") from None
  return wrapped
