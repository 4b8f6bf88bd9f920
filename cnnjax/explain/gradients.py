"""Saliency maps: the gradient of a class logit with respect to the input (Simonyan et al. 2014), plain,
guided (Springenberg et al. 2015) or rectified (Zeiler & Fergus 2014) through every ReLU (`backprop`)."""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from cnnjax.explain import backprop, features


def input_gradients(model, variables, images, targets, modifier: Optional[str] = None):
  """d logit[target] / d images per image; `modifier` must be chosen here, where the model is traced."""
  backprop.check_reachable(model, images.shape, modifier, images.dtype)

  def score(images):
    with backprop.modified_backprop(modifier):
      logits = features.apply_logits(model, variables, images)
    return jnp.sum(features.target_logits(logits, targets))

  return jax.grad(score)(images)


@functools.partial(jax.jit, static_argnames=("model", "modifier"))
def _saliency(model, variables, images, targets, modifier):
  return input_gradients(features.unwrap_model(model), variables, images, targets, modifier)


def saliency(model, variables, images, targets, *, modifier: Optional[str] = None) -> jax.Array:
  """(B, H, W, C) gradient of each image's target logit w.r.t. its pixels.

  modifier: None (the true gradient), 'guided' (guided backprop) or 'relu' (rectified / deconvnet).
  """
  images = features.check_images(images)
  targets = features.check_targets(model, images, targets)
  return _saliency(features.static_model(model), variables, images, targets, backprop.check_modifier(modifier))


def saliency_map(gradients) -> jax.Array:
  """(B, H, W, C) gradients -> (B, H, W) maps: the largest |gradient| over channels (Simonyan et al.)."""
  if gradients.ndim != 4:
    raise ValueError(f"expected (B, H, W, C) gradients; got shape {tuple(gradients.shape)}")
  return jnp.max(jnp.abs(gradients), axis=-1)
