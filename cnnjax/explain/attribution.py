"""Path and noise attributions: a noise tunnel around any explainer (SmoothGrad, Smilkov et al. 2017; SmoothGrad²
and VarGrad, Adebayo et al. 2018, as captum's NoiseTunnel), Integrated Gradients (Sundararajan et al. 2017) and
GradientSHAP (expected gradients, Lundberg & Lee 2017; Erion et al. 2021, as captum's GradientShap).

All noisy copies / path points are evaluated inside one jitted call, `chunk_size` copies of the batch per model
call (`sampling.chunked_sum`), so memory stays bounded whatever the number of samples.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.explain import backprop, features, gradients, sampling
from cnnjax.explain import targets as targets_lib

NOISE_TUNNEL_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _spread(images):
  """(B,) each image's value range (max - min): noise is a fraction of it, as in the SmoothGrad paper."""
  return jnp.max(images, axis=(1, 2, 3)) - jnp.min(images, axis=(1, 2, 3))


def _noisy(images, keys, samples, noise):
  """(n, B, H, W, C) copies of the images with Gaussian noise of std `noise` x range, keyed per image."""
  draw = lambda key: jax.random.normal(key, images.shape[1:], images.dtype)
  noises = jax.vmap(jax.vmap(draw))(sampling.sample_keys(keys, samples))
  return images[None] + noises * (noise * _spread(images)).astype(images.dtype)[None, :, None, None, None]


def split_options(options):
  """Array-valued options travel into jit as arguments, the rest as static (hashable) ones."""
  arrays = {k: v for k, v in options.items() if isinstance(v, (jax.Array, np.ndarray))}
  static = tuple(sorted((k, v) for k, v in options.items() if k not in arrays))
  return arrays, static


@functools.partial(jax.jit, static_argnames=("explainer", "samples", "kind", "chunk", "static_options", "model"))
def _noise_tunnel(explainer, variables, images, targets, noise, seed, array_options, *, samples, kind, chunk,
                  static_options, model):
  keys = sampling.image_keys(images, seed)
  batch = images.shape[0]

  def evaluate(indices):
    noisy = _noisy(images, keys, indices, noise)
    flat = noisy.reshape(-1, *images.shape[1:])
    out = explainer(features.unwrap_model(model), variables, flat, targets.tile(len(indices)), **array_options,
                    **dict(static_options))
    out = out.reshape(len(indices), batch, *out.shape[1:]).astype(jnp.float32)
    return jnp.sum(out, axis=0), jnp.sum(out * out, axis=0)

  total, total_sq = sampling.chunked_sum(evaluate, samples, chunk)
  mean, mean_sq = total / samples, total_sq / samples
  if kind == "smoothgrad":
    return mean
  if kind == "smoothgrad_sq":
    return mean_sq
  return jnp.maximum(mean_sq - mean * mean, 0)  # vargrad


def noise_tunnel(explainer: Callable, model, variables, images, targets, *, samples: int = 25, noise: float = 0.15,
                 kind: str = "smoothgrad", seed: int = 0, samples_per_call: Optional[int] = None,
                 **explainer_options) -> jax.Array:
  """Any explainer averaged over noisy copies of the images (captum's NoiseTunnel).

  Args:
    explainer: a cnnjax explainer `f(model, variables, images, targets, **explainer_options)` (saliency,
      integrated_gradients, gradcam, ...).
    samples: noisy copies per image. noise: the Gaussian's standard deviation as a fraction of each image's value
      range (max - min), the SmoothGrad paper's 10-20%. seed: with the image's own pixels, keys its noise, so an
      image gets the same noise alone as inside a batch.
    kind: 'smoothgrad' (mean of the explanations), 'smoothgrad_sq' (mean of their squares) or 'vargrad'
      (their variance).
    samples_per_call: noisy copies of the batch per model call (memory bound); default: sampling.CHUNK_BYTES.
  Returns:
    The explainer's output shape. With noise=0.0, 'smoothgrad' equals the explainer itself.
  """
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  if kind not in NOISE_TUNNEL_KINDS:
    raise ValueError(f"unknown noise tunnel kind {kind!r}; choose one of {NOISE_TUNNEL_KINDS}")
  if int(samples) < 1:
    raise ValueError(f"samples must be a positive number of noisy copies; got {samples}")
  if not noise >= 0:
    raise ValueError(f"noise must be a non-negative fraction of the image's value range; got {noise}")
  if not callable(explainer):
    raise ValueError(f"explainer must be a cnnjax explainer function such as cnnjax.explain.saliency; got "
                     f"{explainer!r}")
  arrays, static = split_options(explainer_options)
  try:
    hash(static)
  except TypeError:
    raise ValueError(f"explainer options must be arrays or hashable values; got {dict(static)}") from None
  chunk = sampling.check_chunk_size(samples_per_call, model, images, int(samples), "noisy copies")
  return _noise_tunnel(explainer, variables, images, targets, jnp.float32(noise), jnp.uint32(seed), arrays,
                       samples=int(samples), kind=kind, chunk=chunk, static_options=static,
                       model=features.static_model(model))


def smoothgrad(model, variables, images, targets, *, samples: int = 25, noise: float = 0.15,
               modifier: Optional[str] = None, seed: int = 0) -> jax.Array:
  """(B, H, W, C) mean input gradient over `samples` noisy copies of each image (Smilkov et al. 2017): the noise
  tunnel around `saliency`. noise: as in `noise_tunnel`; modifier: as in `saliency` ('guided' for SmoothGrad on
  guided backprop)."""
  return noise_tunnel(gradients.saliency, model, variables, images, targets, samples=samples, noise=noise,
                      seed=seed, modifier=backprop.check_modifier(modifier))


def _path_gradients(model, variables, images, targets, points, samples, chunk):
  """sum over s < samples of (d score / d x at points(s)) * weight(s), chunked.

  points: (n,) sample indices -> ((n, B, H, W, C) inputs, (n, B, H, W, C) factors the gradient is multiplied by).
  Returns (B, K, H, W, C).
  """
  batch = images.shape[0]

  def evaluate(indices):
    inputs, factors = points(indices)
    grads = gradients.input_gradients(model, variables, inputs.reshape(-1, *images.shape[1:]),
                                      targets.tile(len(indices)), None)
    grads = grads.reshape(len(indices), batch, *grads.shape[1:])
    return jnp.sum(grads * factors[:, :, None], axis=0)

  return sampling.chunked_sum(evaluate, samples, chunk)


@functools.partial(jax.jit, static_argnames=("model", "steps", "chunk", "return_delta"))
def _integrated_gradients(model, variables, images, targets, baseline, steps, chunk, return_delta):
  model = features.unwrap_model(model)
  difference = images - baseline

  def points(indices):
    # Midpoint rule on [0, 1]: its error falls as 1/steps^2 on smooth paths.
    alphas = ((indices + 0.5) / steps).astype(images.dtype)[:, None, None, None, None]
    return baseline[None] + alphas * difference[None], jnp.broadcast_to(difference / steps, (len(indices),
                                                                                             *images.shape))

  attributions = _path_gradients(model, variables, images, targets, points, steps, chunk)
  if not return_delta:
    return targets.output(attributions)
  ends = targets.tile(2).scores(features.apply_logits(model, variables, jnp.concatenate([images, baseline])))
  gap = ends[:images.shape[0]] - ends[images.shape[0]:]
  delta = jnp.sum(attributions, axis=(2, 3, 4)) - gap
  return targets.output(attributions), targets.output(delta)


def check_baseline(baseline, images, what="baseline"):
  baseline = jnp.zeros_like(images) if baseline is None else jnp.asarray(baseline, images.dtype)
  try:
    return jnp.broadcast_to(baseline, images.shape)
  except ValueError:
    raise ValueError(f"{what} of shape {baseline.shape} does not broadcast to the images' shape "
                     f"{images.shape}; pass a scalar, an (H, W, C) image or a (B, H, W, C) batch") from None


def integrated_gradients(model, variables, images, targets, *, baseline=None, steps: int = 32,
                         chunk_size: Optional[int] = None, return_delta: bool = False):
  """(B, H, W, C) integrated gradients of each target's score from `baseline` (default: black, zeros).

  Completeness: the attributions of an image sum to score(image) - score(baseline), up to the error of the
  `steps`-point midpoint rule. baseline: an array broadcastable to the images, or a scalar. chunk_size: path
  points per model call (memory bound; default: sampling.CHUNK_BYTES). return_delta: also return the
  completeness gap, sum(attributions) - (score(image) - score(baseline)), per image (captum's delta).
  Returns attributions, or (attributions, delta (B,)) — (B, K, ...) and (B, K) for (B, K) targets.
  """
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  if int(steps) < 1:
    raise ValueError(f"steps must be a positive number of integration points; got {steps}")
  chunk = sampling.check_chunk_size(chunk_size, model, images, int(steps), "path points")
  return _integrated_gradients(features.static_model(model), variables, images, targets,
                               check_baseline(baseline, images), int(steps), chunk, bool(return_delta))


@functools.partial(jax.jit, static_argnames=("model", "samples", "chunk"))
def _gradient_shap(model, variables, images, targets, baselines, noise, seed, samples, chunk):
  model = features.unwrap_model(model)
  keys = sampling.image_keys(images, seed)
  spread = (noise * _spread(images)).astype(images.dtype)[None, :, None, None, None]

  def points(indices):
    sample_keys = sampling.sample_keys(keys, indices)  # (n, B)
    noise_keys, choice_keys, alpha_keys = jnp.moveaxis(jax.vmap(jax.vmap(
        lambda key: jax.random.split(key, 3)))(sample_keys), 2, 0)
    noisy = images[None] + spread * jax.vmap(jax.vmap(
        lambda key: jax.random.normal(key, images.shape[1:], images.dtype)))(noise_keys)
    chosen = baselines[jax.vmap(jax.vmap(lambda key: jax.random.randint(key, (), 0, len(baselines))))(
        choice_keys)]
    alphas = jax.vmap(jax.vmap(lambda key: jax.random.uniform(key, (), images.dtype)))(alpha_keys)
    alphas = alphas[:, :, None, None, None]
    return chosen + alphas * (noisy - chosen), (noisy - chosen) / samples

  return targets.output(_path_gradients(model, variables, images, targets, points, samples, chunk))


def gradient_shap(model, variables, images, targets, *, baselines=None, samples: int = 50, noise: float = 0.0,
                  seed: int = 0, chunk_size: Optional[int] = None) -> jax.Array:
  """(B, H, W, C) GradientSHAP: the expected gradient times (input - baseline) at a random point of the straight
  path from a baseline drawn from `baselines` to the (optionally noised) input (captum's GradientShap).

  Args:
    baselines: the reference distribution, (N, H, W, C) images (or one (H, W, C) image, or a scalar); default
      one black image. samples: draws per image (captum's n_samples). noise: Gaussian noise added to the input, as
      a fraction of each image's value range (captum's stdevs, scaled per image). seed: with the image's pixels,
      keys the draws. chunk_size: draws per model call.
  Returns: (B, H, W, C) attributions ((B, K, ...) for (B, K) targets); their sum is, in expectation,
    score(image) - mean score(baselines) when noise=0.
  """
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  if int(samples) < 1:
    raise ValueError(f"samples must be a positive number of draws; got {samples}")
  if not noise >= 0:
    raise ValueError(f"noise must be a non-negative fraction of the image's value range; got {noise}")
  baselines = jnp.zeros((1, *images.shape[1:]), images.dtype) if baselines is None else jnp.asarray(
      baselines, images.dtype)
  if baselines.ndim < 4:
    baselines = check_baseline(baselines, images[:1], "baselines")
  if baselines.shape[1:] != images.shape[1:]:
    raise ValueError(f"baselines must be (N, H, W, C) images of the inputs' size {tuple(images.shape[1:])}; got "
                     f"shape {tuple(baselines.shape)}")
  chunk = sampling.check_chunk_size(chunk_size, model, images, int(samples), "draws")
  return _gradient_shap(features.static_model(model), variables, images, targets, baselines, jnp.float32(noise),
                        jnp.uint32(seed), int(samples), chunk)
