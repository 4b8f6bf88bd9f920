"""Saliency maps: the gradient of a target's score with respect to the input (Simonyan et al. 2014), plain,
guided (Springenberg et al. 2015) or rectified (Zeiler & Fergus 2014) through every ReLU (`backprop`); and
input x gradient (Shrikumar et al. 2016)."""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from cnnjax.explain import backprop, features
from cnnjax.explain import targets as targets_lib


def input_gradients(model, variables, images, targets: targets_lib.Targets, modifier: Optional[str] = None):
  """(B, K, H, W, C) d score_k / d images per image; `modifier` must be chosen here, where the model is traced."""
  backprop.check_reachable(model, images.shape, modifier, images.dtype)

  def logits(images):
    with backprop.modified_backprop(modifier):
      return features.apply_logits(model, variables, images)

  return targets_lib.pullback(logits, images, targets)[1]


@functools.partial(jax.jit, static_argnames=("model", "modifier", "times_input"))
def _saliency(model, variables, images, targets, modifier, times_input=False):
  grads = input_gradients(features.unwrap_model(model), variables, images, targets, modifier)
  return targets.output(grads * images[:, None] if times_input else grads)


def saliency(model, variables, images, targets, *, modifier: Optional[str] = None) -> jax.Array:
  """(B, H, W, C) gradient of each image's target score w.r.t. its pixels ((B, K, H, W, C) for (B, K) targets).

  modifier: None (the true gradient), 'guided' (guided backprop) or 'relu' (rectified / deconvnet).
  """
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  return _saliency(features.static_model(model), variables, images, targets, backprop.check_modifier(modifier))


def input_x_gradient(model, variables, images, targets) -> jax.Array:
  """(B, H, W, C) the images times the gradient of the target score (Shrikumar et al. 2016, "Not just a black
  box"; captum's InputXGradient): a first-order estimate of each pixel's contribution against a zero input."""
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  return _saliency(features.static_model(model), variables, images, targets, None, times_input=True)


def saliency_map(gradients) -> jax.Array:
  """(B, [K,] H, W, C) gradients -> (B, [K,] H, W) maps: the largest |gradient| over channels (Simonyan et al.)."""
  if gradients.ndim not in (4, 5):
    raise ValueError(f"expected (B, H, W, C) or (B, K, H, W, C) gradients; got shape {tuple(gradients.shape)}")
  return jnp.max(jnp.abs(gradients), axis=-1)
