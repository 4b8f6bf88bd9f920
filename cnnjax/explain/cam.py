"""Class activation maps from gradients at a feature layer: Grad-CAM (Selvaraju et al. 2017), Grad-CAM++
(Chattopadhay et al. 2018) and guided Grad-CAM.

Only the network above the chosen layer is differentiated, with respect to a zero probe added to that
layer's output (see `features.probe_gradients`): no parameter gradients and no backward pass below the
layer, so a map costs about one forward pass.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from cnnjax.explain import backprop, features, gradients

# A map whose maximum is below the smallest normal float32 stays all-zero rather than NaN. The guard is not
# larger because untrained or badly scaled models legitimately give maps of order 1e-12.
_EPSILON = float(jnp.finfo(jnp.float32).tiny)


def normalize_maps(maps):
  """Scales each (H, W) map to [0, 1] by its maximum; an all-zero (or all-negative) map becomes zeros."""
  maps = jnp.maximum(maps, 0)
  peak = jnp.max(maps, axis=(1, 2), keepdims=True)
  return jnp.where(peak > _EPSILON, maps / jnp.where(peak > _EPSILON, peak, 1), 0)


def _upsample(maps, size):
  # Half-pixel-centre bilinear interpolation, as PyTorch's align_corners=False and cv2.resize.
  return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear", antialias=False)


def gradcam_weights(activations, grads):
  """Grad-CAM: the spatial mean of the gradient of each channel."""
  del activations
  return jnp.mean(grads, axis=(1, 2))


def gradcam_plus_plus_weights(activations, grads):
  """Grad-CAM++ in the closed form for an exponentiated score (as pytorch-grad-cam computes it):
  alpha = g^2 / (2 g^2 + sum_ij(A) g^3), weights = sum_ij alpha * relu(g)."""
  grads_2 = grads ** 2
  grads_3 = grads_2 * grads
  activation_sums = jnp.sum(activations, axis=(1, 2), keepdims=True)
  denominators = 2 * grads_2 + activation_sums * grads_3
  # Where the gradient vanishes alpha is 0/0; it multiplies relu(g) = 0 there anyway.
  defined = (grads != 0) & (denominators != 0)
  alphas = jnp.where(defined, grads_2 / jnp.where(defined, denominators, 1), 0)
  return jnp.sum(alphas * jax.nn.relu(grads), axis=(1, 2))


_WEIGHTINGS = {"gradcam": gradcam_weights, "gradcam++": gradcam_plus_plus_weights}


def class_activation_maps(model, variables, images, targets, layer, modifier=None, weighting="gradcam"):
  """(B, H, W) maps in [0, 1] at the input's resolution (untraced helper, for use inside jit)."""
  activations, grads = features.probe_gradients(model, variables, images, targets, layer, modifier)
  activations = activations.astype(jnp.float32)
  weights = _WEIGHTINGS[weighting](activations, grads)
  maps = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", activations, weights))
  return normalize_maps(_upsample(maps, images.shape[1:3]))


@functools.partial(jax.jit, static_argnames=("model", "layer", "modifier", "weighting"))
def _cam(model, variables, images, targets, layer, modifier, weighting):
  return class_activation_maps(features.unwrap_model(model), variables, images, targets, layer, modifier,
                               weighting)


@functools.partial(jax.jit, static_argnames=("model", "layer", "modifier"))
def _guided_cam(model, variables, images, targets, layer, modifier):
  model = features.unwrap_model(model)
  maps = class_activation_maps(model, variables, images, targets, layer, modifier)
  guided = gradients.input_gradients(model, variables, images, targets, "guided")
  return guided * maps[..., None].astype(guided.dtype)


def _prepare(model, images, targets, layer, modifier):
  images = features.check_images(images)
  targets = features.check_targets(model, images, targets)
  info = features.resolve_layer(model, images.shape[1:], layer, spatial=True)
  return features.static_model(model), images, targets, info, backprop.check_modifier(modifier)


def gradcam(model, variables, images, targets, *, layer: Optional[str] = None,
            modifier: Optional[str] = None) -> jax.Array:
  """(B, H, W) Grad-CAM maps in [0, 1] for each image's target logit at `layer` (Keras-style name).

  layer=None: the last spatial feature map before global pooling / flatten (`features.default_cam_layer`).
  modifier: backprop modifier for the ReLUs above the layer (None, 'guided', 'relu').
  """
  model, images, targets, info, modifier = _prepare(model, images, targets, layer, modifier)
  return _cam(model, variables, images, targets, info, modifier, "gradcam")


def gradcam_plus_plus(model, variables, images, targets, *, layer: Optional[str] = None,
                      modifier: Optional[str] = None) -> jax.Array:
  """(B, H, W) Grad-CAM++ maps in [0, 1]; arguments as `gradcam`."""
  model, images, targets, info, modifier = _prepare(model, images, targets, layer, modifier)
  return _cam(model, variables, images, targets, info, modifier, "gradcam++")


def guided_gradcam(model, variables, images, targets, *, layer: Optional[str] = None,
                   modifier: Optional[str] = None) -> jax.Array:
  """(B, H, W, C) guided backprop saliency times the Grad-CAM map (Selvaraju et al. 2017)."""
  model, images, targets, info, modifier = _prepare(model, images, targets, layer, modifier)
  return _guided_cam(model, variables, images, targets, info, modifier)
