"""Is an explanation faithful to the model, and robust? Deletion / insertion (Petsiuk et al. 2018), MuFidelity
(Bhatt et al. 2020, as xplique), infidelity and max-sensitivity (Yeh et al. 2019, as captum), ROAD (Rong et al.
2022, as pytorch-grad-cam), and the sanity checks: cascading model-parameter randomization (Adebayo et al. 2018)
and the random-logit test (Sixt et al. 2020).

The perturbation metrics evaluate all their perturbed copies inside one jitted call, `chunk_size` copies of the
batch per model call, with random draws keyed by each image's pixels (`sampling`): an image scores the same alone
as inside any batch.
"""
import functools
from typing import Callable, Dict, List, Optional

import dm_pix
import flax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from cnnjax.explain import attribution, features, gradients, registry, sampling
from cnnjax.explain import targets as targets_lib

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


def single_targets(model, images, targets) -> targets_lib.Targets:
  """Checked targets with one score per image (a class or a function of the logits), as the metrics need."""
  targets = targets_lib.check_targets(model, images, targets)
  if targets.multi:
    raise ValueError(f"this metric scores one target per image; got (B, K) = {tuple(targets.indices.shape)} "
                     "targets: call it once per column, targets[:, k]")
  return targets


def target_probabilities(logits, targets: targets_lib.Targets):
  """What the metrics score: the softmax over the logits, or the logits themselves for a target function."""
  return logits if targets.function is not None else jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _check_maps(maps, images) -> jax.Array:
  """float32 (B, H, W) maps of the images, or gradients (B, H, W, C) reduced to max |g| over channels."""
  maps = jnp.asarray(maps)
  if maps.ndim == 4:
    maps = gradients.saliency_map(maps)
  if maps.shape != images.shape[:3]:
    raise ValueError(f"maps must be (B, H, W) = {tuple(images.shape[:3])} (or the gradients' (B, H, W, C)); "
                     f"got shape {tuple(maps.shape)}")
  return maps.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "steps", "substrate", "blur_sigma", "chunk"))
def _deletion_insertion(model, variables, images, targets, maps, *, steps, substrate, blur_sigma, chunk):
  model = features.unwrap_model(model)
  ranks = pixel_ranks(maps)[..., None]
  pixels = maps.shape[1] * maps.shape[2]
  blurred = blur_images(images, blur_sigma)
  removed = blurred if substrate == "blur" else jnp.zeros_like(images)

  counts = jnp.round(jnp.arange(steps + 1) * pixels / steps).astype(jnp.int32)

  def probabilities(indices):
    """(n, 2, B) probabilities after deleting / inserting the counts[indices] most important pixels."""
    chosen = ranks[None] < counts[indices][:, None, None, None, None]
    deleted = jnp.where(chosen, removed[None], images[None])
    inserted = jnp.where(chosen, images[None], blurred[None])
    both = jnp.concatenate([deleted, inserted], axis=1).reshape(-1, *images.shape[1:])
    logits = features.apply_logits(model, variables, both)
    scores = targets.tile(2 * len(indices)).scores(target_probabilities(logits, targets))[:, 0]
    return scores.reshape(len(indices), 2, -1)

  curves = sampling.chunked_stack(probabilities, steps + 1, chunk)  # (steps + 1, 2, B)
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
  targets = single_targets(model, images, targets)
  maps = _check_maps(maps, images)
  if substrate not in SUBSTRATES:
    raise ValueError(f"unknown substrate {substrate!r}; choose one of {SUBSTRATES}")
  if int(steps) < 1 or blur_sigma <= 0:
    raise ValueError(f"need steps >= 1 and blur_sigma > 0; got steps={steps}, blur_sigma={blur_sigma}")
  both = jax.ShapeDtypeStruct((2 * images.shape[0], *images.shape[1:]), images.dtype)  # deleted and inserted
  chunk = sampling.check_chunk_size(None, model, both, int(steps) + 1, "steps")
  return _deletion_insertion(features.static_model(model), variables, images, targets, maps, steps=int(steps),
                             substrate=substrate, blur_sigma=float(blur_sigma), chunk=chunk)


# --- what the perturbation metrics share ---------------------------------------------------------------------

def _draws(keys, indices, draw):
  """(n, B, ...): draw(key) for each of the sample `indices` (n,) of each image's key (`sampling.sample_keys`)."""
  return jax.vmap(jax.vmap(draw))(sampling.sample_keys(keys, indices))


def normal_perturbations(keys, indices, shape, scale, dtype=jnp.float32):
  """(n, B, *shape) Gaussian noise of standard deviation `scale`: `infidelity`'s perturbations I for the sample
  `indices` (n,), from the per-image keys `sampling.image_keys(images, seed)` (to feed another implementation the
  very same ones)."""
  return _draws(keys, indices, lambda key: jax.random.normal(key, shape, dtype) * jnp.asarray(scale, dtype))


def uniform_perturbations(keys, indices, shape, radius, dtype=jnp.float32):
  """(n, B, *shape) noise uniform in [-radius, radius): `sensitivity_max`'s perturbations (see
  `normal_perturbations`)."""
  radius = jnp.asarray(radius, dtype)
  return _draws(keys, indices, lambda key: jax.random.uniform(key, shape, dtype, minval=-radius, maxval=radius))


def _copy_scores(model, variables, copies, targets: targets_lib.Targets, probabilities: bool = False):
  """(n, B) target scores of n copies (n, B, H, W, C) of the batch: the score the explainers explain (the logit, or
  the target function's value), or with `probabilities` the one the curve metrics score (`target_probabilities`)."""
  count, batch = copies.shape[:2]
  logits = features.forward_logits(model, variables, copies.reshape(count * batch, *copies.shape[2:]))
  if probabilities:
    logits = target_probabilities(logits, targets)
  return targets.tile(count).scores(logits)[:, 0].reshape(count, batch)


def average_ranks(values):
  """(..., n) -> 1-based ranks along the last axis, tied values sharing their average rank (scipy's rankdata)."""
  flat = values.reshape(-1, values.shape[-1])
  ordered = jnp.sort(flat, axis=-1)
  below, upto = (jax.vmap(functools.partial(jnp.searchsorted, side=side))(ordered, flat) for side in ("left", "right"))
  return ((below + upto + 1) / 2).reshape(values.shape)


def rank_correlation(first, second):
  """Spearman's rank correlation along the last axis of two (..., n) arrays, jittable; 0 where either is constant
  (it has no ranking), as xplique reports its NaN correlation."""
  first, second = (average_ranks(values.astype(jnp.float32)) for values in (first, second))
  first, second = (values - jnp.mean(values, axis=-1, keepdims=True) for values in (first, second))
  scale = jnp.sqrt(jnp.sum(first * first, axis=-1) * jnp.sum(second * second, axis=-1))
  return jnp.where(scale > 0, jnp.sum(first * second, axis=-1) / jnp.where(scale > 0, scale, 1), 0.0)


def _check_attributions(attributions, images) -> jax.Array:
  """float32 (B, H, W, C) attributions like the images, or a (B, H, W) map as (B, H, W, 1)."""
  attributions = jnp.asarray(attributions)
  if attributions.shape == images.shape[:3]:
    attributions = attributions[..., None]
  if attributions.shape != images.shape and attributions.shape != (*images.shape[:3], 1):
    raise ValueError(f"attributions must be (B, H, W, C) = {tuple(images.shape)} like the images, or (B, H, W) "
                     f"maps; got shape {tuple(attributions.shape)}")
  return attributions.astype(jnp.float32)


def _check_samples(samples, least: int, what: str) -> int:
  if int(samples) < least:
    raise ValueError(f"samples must be at least {least} {what}; got {samples}")
  return int(samples)


# --- MuFidelity and infidelity: do the attributions predict what removing or perturbing pixels does? -----------

def _grid_cells(size, grid) -> np.ndarray:
  """(H, W) index of each pixel's cell in a (gh, gw) grid: nearest-neighbour upsampling with half-pixel centres, as
  xplique's tf.image.resize of its grid mask."""
  rows, cols = (np.minimum(((np.arange(n) + 0.5) * g / n).astype(np.int32), g - 1) for n, g in zip(size, grid))
  return rows[:, None] * grid[1] + cols[None, :]


@functools.partial(jax.jit, static_argnames=("model", "grid", "samples", "chunk"))
def _mufidelity(model, variables, images, targets, pixel_attributions, baseline, subset_percent, seed, *, grid,
                samples, chunk):
  model = features.unwrap_model(model)
  keys = sampling.image_keys(images, seed)
  cells = _grid_cells(images.shape[1:3], grid)
  base = _copy_scores(model, variables, images[None], targets)[0]

  def evaluate(indices):
    drawn = _draws(keys, indices, lambda key: jax.random.uniform(key, (grid[0] * grid[1],)))
    removed = (drawn <= subset_percent)[..., cells]  # (n, B, H, W): the subset S, set to the baseline
    drops = base - _copy_scores(model, variables, jnp.where(removed[..., None], baseline, images), targets)
    return drops, jnp.sum(jnp.where(removed, pixel_attributions, 0), axis=(2, 3))

  drops, sums = sampling.chunked_stack(evaluate, samples, chunk)
  return rank_correlation(drops.T, sums.T)


def mufidelity(model, variables, images, targets, attributions, *, grid_size: Optional[int] = 9,
               subset_percent: float = 0.2, baseline=0.0, samples: int = 200, seed: int = 0,
               chunk_size: Optional[int] = None) -> jax.Array:
  """MuFidelity per image (Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model Explanations", def. 3;
  xplique's MuFidelity): over `samples` random subsets S of the image, the Spearman correlation between the
  attributions' sum over S and the drop in the target's score when S is set to the baseline.

  Args:
    attributions: (B, H, W, C) like the images, or (B, H, W) maps.
    grid_size: S is a set of cells of a grid_size x grid_size grid over the image (super-pixels, as xplique
      recommends beyond tiny images; no finer than the pixels); None: of single pixels, the paper's definition.
    subset_percent: each cell is in S with this probability (xplique's independent draws), so S covers about this
      fraction of the image.
    baseline: the value S is set to: a scalar, an (H, W, C) image or a (B, H, W, C) batch (xplique's baseline_mode).
    samples: subsets per image (xplique's nb_samples). seed: with each image's pixels, keys its subsets.
    chunk_size: subsets per model call (the memory bound; default: sampling.CHUNK_BYTES).
  Returns:
    (B,) correlations in [-1, 1], higher is more faithful; 0 where the drops or the sums do not vary. The score is
    the one the explainers explain, the target's logit (or the target function's value), as xplique's default
    operator f(x)[y] on the model's output; xplique reports the mean over the images.
  """
  images = features.check_images(images)
  targets = single_targets(model, images, targets)
  attributions = _check_attributions(attributions, images)
  size = images.shape[1:3]
  if grid_size is not None and int(grid_size) < 1:
    raise ValueError(f"grid_size must be a positive number of cells per side (or None for single pixels); got "
                     f"{grid_size}")
  if not 0 < subset_percent < 1:
    raise ValueError(f"subset_percent must be a fraction of the image in (0, 1); got {subset_percent}")
  samples = _check_samples(samples, 2, "subsets per image (a correlation needs two)")
  chunk = sampling.check_chunk_size(chunk_size, model, images, samples, "subsets")
  grid = tuple(size) if grid_size is None else tuple(min(int(grid_size), side) for side in size)
  return _mufidelity(features.static_model(model), variables, images, targets, jnp.sum(attributions, axis=-1),
                     attribution.check_baseline(baseline, images), jnp.float32(subset_percent), jnp.uint32(seed),
                     grid=grid, samples=samples, chunk=chunk)


@functools.partial(jax.jit, static_argnames=("model", "samples", "chunk"))
def _infidelity(model, variables, images, targets, attributions, noise, seed, normalize, multiply_by_inputs, *,
                samples, chunk):
  model = features.unwrap_model(model)
  keys = sampling.image_keys(images, seed)
  base = _copy_scores(model, variables, images[None], targets)[0]
  # captum's infidelity_perturb_func_decorator(True) dots with I / x (I where x is 0).
  divisors = jnp.where(multiply_by_inputs & (images != 0), images, 1)

  def evaluate(indices):
    perturbations = normal_perturbations(keys, indices, images.shape[1:], noise, images.dtype)
    drops = base - _copy_scores(model, variables, images - perturbations, targets)
    return jnp.sum(attributions * perturbations / divisors, axis=(2, 3, 4)), drops

  products, drops = sampling.chunked_stack(evaluate, samples, chunk)  # (samples, B): I . phi(x) and f(x) - f(x - I)
  squares = jnp.sum(products * products, axis=0)
  beta = jnp.sum(products * drops, axis=0) / jnp.where(squares == 0, 1, squares)  # the least-squares scale
  return jnp.mean((jnp.where(normalize, beta, 1) * products - drops) ** 2, axis=0)


def infidelity(model, variables, images, targets, attributions, *, samples: int = 50, noise: float = 0.003,
               seed: int = 0, normalize: bool = False, multiply_by_inputs: bool = False,
               chunk_size: Optional[int] = None) -> jax.Array:
  """Explanation infidelity per image (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations";
  captum's infidelity): E_I[(I . phi(x) - (f(x) - f(x - I)))^2], the mean squared error of the attributions phi
  as a linear prediction of how the target's score f changes under perturbations I.

  The perturbation is captum's documented example: I Gaussian, of standard deviation `noise` in the images' units
  per pixel and channel, and the perturbed input x - I. `multiply_by_inputs=True` dots the attributions with I / x
  instead (captum's `infidelity_perturb_func_decorator(True)`, zero pixels left as I), for attributions that
  already multiply by the input (input x gradient, integrated gradients from a zero baseline); the default suits
  local ones (saliency, SmoothGrad). f is the score the explainers explain: the target's logit, or the target
  function's value.

  Args:
    attributions: (B, H, W, C) like the images, or (B, H, W) maps given to every channel.
    samples: perturbations per image (captum's n_perturb_samples, default 10 there). noise: I's standard deviation.
    seed: with each image's pixels, keys its perturbations (`normal_perturbations` draws the same ones).
    normalize: scale the attributions by the least-squares beta = E[I.phi (f(x) - f(x - I))] / E[(I.phi)^2] first
      (captum's normalize, the paper's scale-invariant infidelity).
    chunk_size: perturbations per model call (the memory bound; default: sampling.CHUNK_BYTES).
  Returns:
    (B,) non-negative infidelities, lower is more faithful: 0 for the gradient of a linear score.
  """
  images = features.check_images(images)
  targets = single_targets(model, images, targets)
  attributions = _check_attributions(attributions, images)
  samples = _check_samples(samples, 1, "perturbation per image")
  if not noise > 0:
    raise ValueError(f"noise must be a positive standard deviation in the images' units; got {noise}")
  chunk = sampling.check_chunk_size(chunk_size, model, images, samples, "perturbations")
  return _infidelity(features.static_model(model), variables, images, targets, attributions, jnp.float32(noise),
                     jnp.uint32(seed), jnp.bool_(normalize), jnp.bool_(multiply_by_inputs), samples=samples,
                     chunk=chunk)


# --- max-sensitivity: how much does the explanation move when the input barely does? --------------------------

@functools.partial(jax.jit, static_argnames=("explainer", "model", "samples", "chunk", "static_options"))
def _sensitivity_max(explainer, variables, images, targets, radius, seed, array_options, *, model, samples, chunk,
                     static_options):
  model = features.unwrap_model(model)

  def explain(inputs, targets):
    out = explainer(model, variables, inputs, targets, **array_options, **dict(static_options))
    return jnp.asarray(out, jnp.float32).reshape(inputs.shape[0], -1)

  original = explain(images, targets)
  norms = jnp.linalg.norm(original, axis=1)
  norms = jnp.where(norms == 0, 1, norms)  # captum divides by 1 where the explanation is all zero
  keys = sampling.image_keys(images, seed)

  def evaluate(indices):
    copies = images[None] + uniform_perturbations(keys, indices, images.shape[1:], radius, images.dtype)
    moved = explain(copies.reshape(-1, *images.shape[1:]), targets.tile(len(indices)))
    return jnp.linalg.norm(moved.reshape(len(indices), *original.shape) - original, axis=2) / norms

  return jnp.max(sampling.chunked_stack(evaluate, samples, chunk), axis=0)


def sensitivity_max(explainer: Callable, model, variables, images, targets, *, samples: int = 10,
                    radius: float = 0.02, seed: int = 0, samples_per_call: Optional[int] = None,
                    **explainer_options) -> jax.Array:
  """Max-sensitivity per image (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"; captum's
  sensitivity_max): max over `samples` perturbations d uniform in [-radius, radius) per pixel and channel of
  ||phi(x + d) - phi(x)|| / ||phi(x)||, Frobenius norms over the whole explanation (captum's norm_ord='fro'; an
  all-zero phi(x) divides by 1, as captum).

  Args:
    explainer: a cnnjax explainer `f(model, variables, images, targets, **explainer_options)`, e.g.
      cnnjax.explain.saliency or gradcam; its options named samples, radius, seed or samples_per_call are this
      function's own (set them with functools.partial). Array options travel into jit as arguments.
    samples: perturbations per image (captum's n_perturb_samples). radius: the L-infinity radius, in the images'
      units (captum's perturb_radius). seed: with each image's pixels, keys its perturbations
      (`uniform_perturbations` draws the same ones).
    samples_per_call: perturbed copies of the batch per explainer call (the memory bound; default: sampling.CHUNK_BYTES
      per call).
  Returns:
    (B,) non-negative sensitivities, lower is more robust: 0 for saliency on a linear model.
  """
  images = features.check_images(images)
  targets = single_targets(model, images, targets)
  if not callable(explainer):
    raise ValueError(f"explainer must be a cnnjax explainer function such as cnnjax.explain.saliency; got "
                     f"{explainer!r}")
  samples = _check_samples(samples, 1, "perturbation per image")
  if not radius > 0:
    raise ValueError(f"radius must be a positive perturbation size in the images' units; got {radius}")
  arrays, static = attribution.split_options(explainer_options)
  try:
    hash(static)
  except TypeError:
    raise ValueError(f"explainer options must be arrays or hashable values; got {dict(static)}") from None
  chunk = sampling.check_chunk_size(samples_per_call, model, images, samples, "perturbations")
  return _sensitivity_max(explainer, variables, images, targets, jnp.float32(radius), jnp.uint32(seed), arrays,
                          model=features.static_model(model), samples=samples, chunk=chunk, static_options=static)


# --- ROAD: remove and debias with noisy linear imputation ------------------------------------------------------

# (row offset, column offset, weight) of the 8 neighbours a removed pixel averages: Rong et al.'s weights, as
# pytorch-grad-cam's `neighbors_weights` (they sum to 1).
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
              (1, 0, 1 / 6), (-1, 0, 1 / 6))
# Conjugate gradients stop at this residual relative to the right-hand side: about 1e-4 of the image's range from
# the exact (sparse direct) solution at 32px and 6e-4 at 224px in float32, far below the imputation noise.
_CG_TOLERANCE = 1e-5
ROAD_ORDERS = ("most", "least", "combined")
ROAD_SIGNS = {"most": 1, "least": -1}  # the map's sign that ranks the pixels removed first


def _neighbour_sum(image):
  """(H, W, C) -> each pixel's NEIGHBOURS-weighted sum of its neighbours, those outside the image absent."""
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  return sum(weight * padded[1 + rows:1 + rows + height, 1 + cols:1 + cols + width]
             for rows, cols, weight in NEIGHBOURS)


def _linear_imputation(image, removed):
  """One (H, W, C) image with its `removed` (H, W) pixels replaced by the solution of Rong et al.'s linear system:
  each removed pixel equals the weighted mean of its in-image neighbours, known ones entering as data.

  The system L x = b over the removed pixels (L = the neighbours' total weight on the diagonal minus the weights
  between removed neighbours; b = the weighted known neighbours) is symmetric and positive definite once any pixel
  is known, so matrix-free conjugate gradients solve it (L x is a 3x3 stencil), in about the removed region's
  diameter of iterations (550 at 224px with 90% removed). With no pixel known it returns zeros there.
  """
  removed = removed[..., None].astype(image.dtype)
  known = image * (1 - removed)
  degree = _neighbour_sum(jnp.ones_like(removed))
  system = lambda x: removed * (degree * x - _neighbour_sum(removed * x))
  solution, _ = jax.scipy.sparse.linalg.cg(system, removed * _neighbour_sum(known), tol=_CG_TOLERANCE,
                                           maxiter=10 * sum(image.shape[:2]))
  return known + removed * solution


def _noisy_imputation(images, removed, noises):
  """(N, H, W, C) images imputed at their `removed` (N, H, W) pixels, plus `noises` (N, H, W, C) there."""
  return jax.vmap(_linear_imputation)(images, removed) + noises * removed[..., None]


@jax.jit
def _imputation(images, removed, noise, seed):
  noises = normal_perturbations(sampling.image_keys(images, seed), jnp.zeros(1, jnp.int32), images.shape[1:], noise,
                                images.dtype)[0]
  return _noisy_imputation(images, removed, noises)


def noisy_linear_imputation(images, removed, *, noise: float = 0.01, seed: int = 0) -> jax.Array:
  """Rong et al.'s (2022) noisy linear imputation, pytorch-grad-cam's NoisyLinearImputer: each removed pixel becomes
  the weighted mean of its 8 neighbours (1/6 beside, 1/12 diagonally; a sparse linear system per image and channel,
  solved here by conjugate gradients), plus Gaussian noise of standard deviation `noise` (absolute, in the images'
  units).

  Args:
    images: (B, H, W, C). removed: (B, H, W) booleans, True where a pixel is imputed (pytorch-grad-cam's mask is
      the opposite, 1 where kept). seed: with each image's pixels, keys its noise.
  Returns:
    (B, H, W, C) images, the kept pixels unchanged.
  """
  images = features.check_images(images)
  removed = jnp.asarray(removed)
  if removed.shape != images.shape[:3]:
    raise ValueError(f"removed must be a (B, H, W) = {tuple(images.shape[:3])} mask of the pixels to impute; got "
                     f"shape {tuple(removed.shape)}")
  if not noise >= 0:
    raise ValueError(f"noise must be a non-negative standard deviation; got {noise}")
  return _imputation(images, removed.astype(bool), jnp.float32(noise), jnp.uint32(seed))


@functools.partial(jax.jit, static_argnames=("model", "signs", "chunk"))
def _road(model, variables, images, targets, maps, percentiles, noise, seed, *, signs, chunk):
  model = features.unwrap_model(model)
  keys = sampling.image_keys(images, seed)
  count = len(signs) * percentiles.shape[0]
  sample_signs = jnp.repeat(jnp.asarray(signs, maps.dtype), percentiles.shape[0])
  sample_percentiles = jnp.tile(percentiles, len(signs))
  base = _copy_scores(model, variables, images[None], targets, probabilities=True)[0]
  flat_maps = maps.reshape(maps.shape[0], -1)

  def evaluate(indices):
    ranked = sample_signs[indices][:, None, None] * flat_maps[None]  # (n, B, H * W): the larger, the earlier removed
    # pytorch-grad-cam's rule: removed where at or above the (100 - p)-th percentile (linear interpolation).
    thresholds = jax.vmap(lambda values, q: jnp.percentile(values, q, axis=-1))(
        ranked, 100 - sample_percentiles[indices])
    removed = (ranked >= thresholds[..., None]).reshape(len(indices), *images.shape[:3])
    copies = jnp.broadcast_to(images, (len(indices), *images.shape))
    noises = normal_perturbations(keys, indices, images.shape[1:], noise, images.dtype)
    flat = lambda a: a.reshape(-1, *a.shape[2:])
    imputed = _noisy_imputation(flat(copies), flat(removed), flat(noises)).reshape(copies.shape)
    return _copy_scores(model, variables, imputed, targets, probabilities=True) - base

  changes = sampling.chunked_stack(evaluate, count, chunk)  # (orders x percentiles, B)
  return changes.T.reshape(images.shape[0], len(signs), percentiles.shape[0])


def road(model, variables, images, targets, maps, *, percentiles=(10, 20, 30, 40, 50, 60, 70, 80, 90),
         order: str = "combined", noise: float = 0.01, seed: int = 0,
         chunk_size: Optional[int] = None) -> Dict[str, jax.Array]:
  """ROAD, RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods"; pytorch-grad-cam's ROAD metrics): the change in the target's softmax probability when a percentage of
  the pixels, in the order of `maps`, is replaced by noisy linear imputation (`noisy_linear_imputation`), which
  leaks no information about where the removed pixels were.

  Args:
    maps: (B, H, W) relevance at the images' resolution (or (B, H, W, C) gradients, reduced to max |g| over
      channels).
    percentiles: the percentages of pixels removed, each in (0, 100): removed are those at or above the
      (100 - p)-th percentile of the map ('most') or of its negation ('least'). pytorch-grad-cam's `percentile` p
      removes 100 - p percent (its ROADMostRelevantFirst(80) removes the top 20%), so the single-percentile scores
      are its 100 - p ones; over the default, symmetric percentiles the averages are the same.
    order: 'most' (MoRF: the most relevant pixels first; lower is more faithful), 'least' (LeRF: the least
      relevant first; higher is more faithful) or 'combined' (pytorch-grad-cam's ROADCombined, (LeRF - MoRF) / 2;
      higher is more faithful).
    noise: the imputation noise's standard deviation, in the images' units (pytorch-grad-cam's 0.01). seed: with
      each image's pixels, keys it.
    chunk_size: imputed copies of the batch per model call (the memory bound; default: sampling.CHUNK_BYTES).
  Returns:
    {'road': (B,) the score of `order`, the mean over the percentiles; 'most_curve', 'least_curve': (B, P)
    probability after minus before imputation per percentile, for the orders computed}. A target function is
    scored on the logits instead of probabilities.
  """
  images = features.check_images(images)
  targets = single_targets(model, images, targets)
  maps = _check_maps(maps, images)
  if order not in ROAD_ORDERS:
    raise ValueError(f"unknown ROAD order {order!r}; choose one of {ROAD_ORDERS}")
  percentiles = np.asarray(percentiles, np.float32).reshape(-1)
  if not percentiles.size or np.any(~((percentiles > 0) & (percentiles < 100))):
    raise ValueError(f"percentiles must be percentages of pixels to remove, each in (0, 100); got "
                     f"{percentiles.tolist()}")
  if not noise >= 0:
    raise ValueError(f"noise must be a non-negative standard deviation in the images' units; got {noise}")
  names = ("most", "least") if order == "combined" else (order,)
  chunk = sampling.check_chunk_size(chunk_size, model, images, len(names) * percentiles.size, "imputed copies")
  changes = _road(features.static_model(model), variables, images, targets, maps, jnp.asarray(percentiles),
                  jnp.float32(noise), jnp.uint32(seed), signs=tuple(ROAD_SIGNS[name] for name in names),
                  chunk=chunk)
  curves = {name: changes[:, k] for k, name in enumerate(names)}
  means = {name: jnp.mean(curve, axis=1) for name, curve in curves.items()}
  score = (means["least"] - means["most"]) / 2 if order == "combined" else means[order]
  return {"road": score, **{f"{name}_curve": curve for name, curve in curves.items()}}


def _explainer(method: str, layer: Optional[str]):
  """(model, variables, images, targets) -> (B, H, W) map of a registry method (per-pixel attributions reduced to
  max |a| over channels); `gradcam_plus_plus` is accepted for the registry's `gradcam++`."""
  chosen = registry.method("gradcam++" if method == "gradcam_plus_plus" else method)

  def explain(model, variables, images, targets):
    maps = chosen(model, variables, images, targets, layer=layer)
    return gradients.saliency_map(maps) if maps.ndim == 4 else maps
  return explain


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


RANDOMIZATION_TESTS = ("cascade", "random_logit")


def random_other_classes(images, classes, count: int, seed) -> jax.Array:
  """(B,) a class other than each image's `classes`, uniform over the other count - 1, keyed by the image's pixels
  (`sampling.image_keys`)."""
  offsets = jax.vmap(lambda key: jax.random.randint(key, (), 1, count))(sampling.image_keys(images, seed))
  return (jnp.asarray(classes, jnp.int32) + offsets) % count


def _random_logit(model, variables, images, targets, explain, seed) -> dict:
  targets = single_targets(model, images, targets)
  if targets.function is not None:
    raise ValueError("the random-logit test compares the explanations of two classes: give class targets, not a "
                     "function of the logits")
  count = features.num_classes(model, images.shape[1:], images.dtype)
  if count < 2:
    raise ValueError(f"the random-logit test needs a model with at least 2 classes; this one has {count}")
  own = np.asarray(targets.indices[:, 0])
  other = np.asarray(random_other_classes(images, own, count, seed))
  maps = [explain(model, variables, images, classes) for classes in (own, other)]
  return {"random_class": other, "spearman": spearman(*maps)}


def randomization_check(model, variables, images, targets, *, method: str = "gradcam",
                        layer: Optional[str] = None, seed: int = 0, test: str = "cascade"):
  """Sanity checks of an explanation method: does it change when the model or the explained class does?

  test='cascade' (the default): cascading parameter randomization (Adebayo et al. 2018): re-initialise the
  parameterised layers one by one from the top (`predictions`) down, recomputing the explanation after each, and
  report the Spearman rank correlation of each image's map with the original one. A method that explains the
  model (rather than the image) decorrelates as layers are randomised. Returns [{'layer': name, 'spearman': (B,)
  array}, ...] in cascade order (top layer first). Running statistics (BatchNorm) are kept.

  test='random_logit': the random-logit test (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): the Spearman rank correlation per image of the map for its target with the map for a random
  other class (uniform over the others, keyed by `seed` and the image's pixels). A class-sensitive method
  decorrelates; one that only sees the image (as many modified backprop rules do) stays near 1. Returns
  {'random_class': (B,) the other class, 'spearman': (B,)}; the targets must be classes.

  `layer` is the Grad-CAM layer for CAM methods. A constant map (e.g. an all-negative Grad-CAM) correlates 0.
  """
  if test not in RANDOMIZATION_TESTS:
    raise ValueError(f"unknown randomization test {test!r}; choose one of {RANDOMIZATION_TESTS}")
  images = features.check_images(images)
  explain = _explainer(method, layer)
  if test == "random_logit":
    return _random_logit(model, variables, images, targets, explain, seed)
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
