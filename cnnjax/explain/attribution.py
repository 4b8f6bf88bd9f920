"""Path and noise attributions: SmoothGrad (Smilkov et al. 2017) and Integrated Gradients (Sundararajan et
al. 2017). All noisy copies / path points are evaluated inside one jitted call, several copies of the batch
per model call."""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from cnnjax.explain import backprop, features, gradients


# Copies of the batch evaluated per model call: enough to keep the CPU busy on small models, while a
# ResNet50 backward at 224px (about 0.1 GB per image) still fits in memory.
_IMAGES_PER_CALL = 32


def _copies_per_call(batch: int, copies: int) -> int:
  return max(1, min(copies, _IMAGES_PER_CALL // batch))


def _batched_gradients(model, variables, inputs, targets, modifier):
  """Input gradients for (S, B, H, W, C) inputs: a few copies at a time, vectorised, inside one jit."""
  gradients_of = lambda copy: gradients.input_gradients(model, variables, copy, targets, modifier)
  return jax.lax.map(gradients_of, inputs, batch_size=_copies_per_call(inputs.shape[1], inputs.shape[0]))


@functools.partial(jax.jit, static_argnames=("model", "samples", "modifier"))
def _smoothgrad(model, variables, images, targets, noise, seed, samples, modifier):
  model = features.unwrap_model(model)
  spread = jnp.max(images, axis=(1, 2, 3)) - jnp.min(images, axis=(1, 2, 3))
  # One key per image, derived from its position: the same seed reproduces the same noise.
  keys = jax.vmap(lambda b: jax.random.fold_in(jax.random.PRNGKey(seed), b))(jnp.arange(images.shape[0]))
  noises = jax.vmap(lambda key: jax.random.normal(key, (samples, *images.shape[1:]), images.dtype))(keys)
  noises = jnp.swapaxes(noises, 0, 1) * (noise * spread)[None, :, None, None, None]
  grads = _batched_gradients(model, variables, images[None] + noises, targets, modifier)
  return jnp.mean(grads, axis=0)


def smoothgrad(model, variables, images, targets, *, samples: int = 25, noise: float = 0.15,
               modifier: Optional[str] = None, seed: int = 0) -> jax.Array:
  """(B, H, W, C) mean input gradient over `samples` noisy copies of each image.

  noise: the Gaussian's standard deviation as a fraction of each image's value range (max - min), the
  paper's 10-20%. modifier: as in `saliency`, e.g. 'guided' for SmoothGrad on guided backprop.
  """
  images = features.check_images(images)
  targets = features.check_targets(model, images, targets)
  if int(samples) < 1:
    raise ValueError(f"samples must be a positive number of noisy copies; got {samples}")
  if not noise >= 0:
    raise ValueError(f"noise must be a non-negative fraction of the image's value range; got {noise}")
  return _smoothgrad(features.static_model(model), variables, images, targets, jnp.float32(noise),
                     jnp.uint32(seed), int(samples), backprop.check_modifier(modifier))


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def _integrated_gradients(model, variables, images, targets, baseline, steps):
  model = features.unwrap_model(model)
  # Midpoint rule on [0, 1]: its error falls as 1/steps^2 on smooth paths.
  alphas = ((jnp.arange(steps) + 0.5) / steps).astype(images.dtype)[:, None, None, None, None]
  path = baseline[None] + alphas * (images - baseline)[None]
  grads = _batched_gradients(model, variables, path, targets, None)
  return (images - baseline) * jnp.mean(grads, axis=0)


def integrated_gradients(model, variables, images, targets, *, baseline=None, steps: int = 32) -> jax.Array:
  """(B, H, W, C) integrated gradients of each target logit from `baseline` (default: black, zeros).

  Completeness: the attributions of an image sum to logit(image) - logit(baseline), up to the error of the
  `steps`-point midpoint rule. baseline: an array broadcastable to the images, or a scalar.
  """
  images = features.check_images(images)
  targets = features.check_targets(model, images, targets)
  if int(steps) < 1:
    raise ValueError(f"steps must be a positive number of integration points; got {steps}")
  baseline = jnp.zeros_like(images) if baseline is None else jnp.asarray(baseline, images.dtype)
  try:
    baseline = jnp.broadcast_to(baseline, images.shape)
  except ValueError:
    raise ValueError(f"baseline of shape {baseline.shape} does not broadcast to the images' shape "
                     f"{images.shape}; pass a scalar, an (H, W, C) image or a (B, H, W, C) batch") from None
  return _integrated_gradients(features.static_model(model), variables, images, targets, baseline,
                               int(steps))
