"""Is an explanation faithful to the model? Deletion / insertion (Petsiuk et al. 2018) and the cascading
model-parameter randomization check (Adebayo et al. 2018)."""
import functools
from typing import Dict, List, Optional

import dm_pix
import flax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from cnnjax.explain import attribution, cam, features, gradients

SUBSTRATES = ("zeros", "blur")


def blur_images(images, sigma: float):
  """Gaussian blur per image and channel (Petsiuk et al.'s insertion start: kernel 11, sigma 5 at 224px)."""
  return dm_pix.gaussian_blur(images, sigma, kernel_size=2 * int(np.ceil(2 * sigma)) + 1)


def pixel_ranks(maps):
  """(B, H, W) -> rank of each pixel in decreasing importance (0 = most important; ties by position)."""
  flat = maps.reshape(maps.shape[0], -1)
  order = jnp.argsort(-flat, axis=1, stable=True)
  return jnp.argsort(order, axis=1).reshape(maps.shape)


def area_under_curve(curves):
  """Trapezoid rule over an equally spaced [0, 1] fraction of pixels: curves (B, steps + 1) -> (B,)."""
  steps = curves.shape[1] - 1
  return (jnp.sum(curves, axis=1) - (curves[:, 0] + curves[:, -1]) / 2) / steps


@functools.partial(jax.jit, static_argnames=("model", "steps", "substrate", "blur_sigma"))
def _deletion_insertion(model, variables, images, targets, maps, *, steps, substrate, blur_sigma):
  model = features.unwrap_model(model)
  ranks = pixel_ranks(maps)[..., None]
  pixels = maps.shape[1] * maps.shape[2]
  blurred = blur_images(images, blur_sigma)
  removed = blurred if substrate == "blur" else jnp.zeros_like(images)

  def probabilities(count):
    chosen = ranks < count  # the `count` most important pixels
    deleted = jnp.where(chosen, removed, images)
    inserted = jnp.where(chosen, images, blurred)
    logits = features.apply_logits(model, variables, jnp.concatenate([deleted, inserted]))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    both = jnp.take_along_axis(probs, jnp.tile(targets, 2)[:, None], axis=1)[:, 0]
    return both.reshape(2, -1)

  counts = jnp.round(jnp.arange(steps + 1) * pixels / steps).astype(jnp.int32)
  curves = jax.lax.map(probabilities, counts)  # (steps + 1, 2, B): one batch through the model per step
  deletion, insertion = jnp.moveaxis(curves, 0, -1)
  return {"deletion": area_under_curve(deletion), "insertion": area_under_curve(insertion),
          "deletion_curve": deletion, "insertion_curve": insertion}


def deletion_insertion(model, variables, images, targets, maps, *, steps: int = 32, substrate: str = "zeros",
                       blur_sigma: float = 5.0) -> Dict[str, jax.Array]:
  """Deletion and insertion AUCs per image (Petsiuk et al. 2018) of the target's softmax probability.

  Pixels are taken in decreasing order of `maps` ((B, H, W), or (B, H, W, C) gradients, reduced to
  max |g| over channels), `steps` equal slices at a time. Deletion replaces them with zeros (or
  `substrate='blur'`: a blurred copy); insertion starts from a blurred copy (Gaussian, `blur_sigma` pixels)
  and restores them. A faithful map gives low deletion and high insertion AUC. Returns {'deletion',
  'insertion': (B,), 'deletion_curve', 'insertion_curve': (B, steps + 1)}.
  """
  images = features.check_images(images)
  targets = features.check_targets(model, images, targets)
  maps = jnp.asarray(maps)
  if maps.ndim == 4:
    maps = gradients.saliency_map(maps)
  if maps.shape != images.shape[:3]:
    raise ValueError(f"maps must be (B, H, W) = {tuple(images.shape[:3])} (or the gradients' (B, H, W, C)); "
                     f"got shape {tuple(maps.shape)}")
  if substrate not in SUBSTRATES:
    raise ValueError(f"unknown substrate {substrate!r}; choose one of {SUBSTRATES}")
  if int(steps) < 1 or blur_sigma <= 0:
    raise ValueError(f"need steps >= 1 and blur_sigma > 0; got steps={steps}, blur_sigma={blur_sigma}")
  return _deletion_insertion(features.static_model(model), variables, images, targets,
                             maps.astype(jnp.float32), steps=int(steps), substrate=substrate,
                             blur_sigma=float(blur_sigma))


def _explainer(method: str, layer: Optional[str]):
  """(model, variables, images, targets) -> (B, H, W) map for a method name."""
  if method in ("gradcam", "gradcam_plus_plus"):
    explain = cam.gradcam if method == "gradcam" else cam.gradcam_plus_plus
    return lambda *args: explain(*args, layer=layer)
  reduce = gradients.saliency_map
  if method in ("saliency", "guided", "relu"):
    modifier = None if method == "saliency" else method
    return lambda *args: reduce(gradients.saliency(*args, modifier=modifier))
  if method == "guided_gradcam":
    return lambda *args: reduce(cam.guided_gradcam(*args, layer=layer))
  if method == "smoothgrad":
    return lambda *args: reduce(attribution.smoothgrad(*args))
  if method == "integrated_gradients":
    return lambda *args: reduce(attribution.integrated_gradients(*args))
  raise ValueError(f"unknown method {method!r}; choose one of {RANDOMIZATION_METHODS}")


RANDOMIZATION_METHODS = ("gradcam", "gradcam_plus_plus", "saliency", "guided", "relu", "guided_gradcam",
                         "smoothgrad", "integrated_gradients")


def spearman(first, second) -> np.ndarray:
  """Spearman rank correlation per image of two (B, ...) map batches (ties get average ranks).

  A constant map has no ranking; its correlation is reported as 0 (no shared structure), not NaN.
  """
  first, second = (np.asarray(m, np.float64).reshape(len(m), -1) for m in (first, second))
  values = []
  for a, b in zip(first, second):
    if np.ptp(a) == 0 or np.ptp(b) == 0:
      values.append(0.0)
    else:
      values.append(scipy.stats.spearmanr(a, b).statistic)
  return np.asarray(values)


def _param_layers(model, input_shape, params) -> List[str]:
  """Layers owning parameters, in forward order."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  return [info.name for info in features.layer_infos(model, input_shape)
          if any(key.startswith(info.name + "/") for key in flat)]


def _replace(params, name: str, fresh):
  params = flax.core.unfreeze(params)
  *parents, leaf = name.split("/")
  source, target = fresh, params
  for part in parents:
    source, target = source[part], target[part]
  target[leaf] = source[leaf]
  return params


def randomization_check(model, variables, images, targets, *, method: str = "gradcam",
                        layer: Optional[str] = None, seed: int = 0) -> List[dict]:
  """Cascading parameter randomization (Adebayo et al. 2018): re-initialise the parameterised layers one by
  one from the top (`predictions`) down, recomputing the explanation after each, and report the Spearman
  rank correlation of each image's map with the original one.

  A method that explains the model (rather than the image) decorrelates as layers are randomised. Returns
  [{'layer': name, 'spearman': (B,) array}, ...] in cascade order (top layer first). Running statistics
  (BatchNorm) are kept; `layer` is the Grad-CAM layer for CAM methods.
  """
  images = features.check_images(images)
  explain = _explainer(method, layer)
  original = np.asarray(explain(model, variables, images, targets))
  fresh = jax.jit(features.unwrap_model(model).init)(jax.random.PRNGKey(seed), images[:1])["params"]
  fresh = flax.core.unfreeze(fresh)
  params = flax.core.unfreeze(variables["params"])
  results = []
  for name in reversed(_param_layers(model, images.shape[1:], params)):
    params = _replace(params, name, fresh)
    maps = explain(model, {**variables, "params": params}, images, targets)
    results.append({"layer": name, "spearman": spearman(original, maps)})
  return results
