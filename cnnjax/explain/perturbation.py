"""Perturbation explainers: what the score loses when parts of the image are replaced by a baseline. Occlusion
(Zeiler & Fergus 2014) and feature ablation, as captum's Occlusion and FeatureAblation; KernelSHAP (Lundberg &
Lee 2017), as captum's KernelShap; and RISE (Petsiuk et al. 2018), as the authors' reference code.

Every perturbed copy of the batch is built inside one jitted call, `chunk_size` copies per model call, and K
targets score the same perturbed forwards (`Targets.scores` of one set of logits), so memory is bounded by the
chunk and K targets cost no extra model calls. Feature masks, window positions and upsampling weights are static
(numpy) tables; only the images, baselines and random keys are traced.
"""
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.explain import attribution, features, sampling
from cnnjax.explain import targets as targets_lib

# captum's KernelShap weight on the empty and full coalitions: "infinite" in theory (they pin the surrogate to
# f(baseline) and f(x), which makes the values add up), large enough in practice.
KERNEL_SHAP_ENDPOINT_WEIGHT = 1e6


# --- shared machinery ----------------------------------------------------------------------------------------

def _scores(model, variables, targets, inputs):
  """(n, B, K) target scores of n perturbed copies (n, B, H, W, C) of the batch, from one model call."""
  copies, batch = inputs.shape[:2]
  logits = features.forward_logits(model, variables, inputs.reshape(copies * batch, *inputs.shape[2:]))
  return targets.tile(copies).scores(logits).reshape(copies, batch, -1)


def _perturbed_scores(model, variables, targets, perturb, count: int, chunk: int):
  """(count, B, K) scores of all `count` perturbations, `chunk` of them per model call.

  perturb: (n,) int32 perturbation indices -> (n, B, H, W, C) perturbed batches. The scores are stacked, not
  summed (occlusion, ablation and KernelSHAP combine them afterwards): count x B x K floats, never the images.
  """
  def evaluate(indices):
    return _scores(model, variables, targets, perturb(indices))

  return sampling.chunked_stack(evaluate, count, chunk)


def _unperturbed_scores(model, variables, images, targets):
  """(B, K) scores of the images themselves."""
  return _scores(model, variables, targets, images[None])[0]


def _per_channel(maps, images, targets):
  """(B, K, H, W) maps -> (B, [K,] H, W, C): every channel of a pixel is perturbed together, so shares its value."""
  return targets.output(jnp.broadcast_to(maps[..., None], (*maps.shape, images.shape[-1])))


def _is_count(value) -> bool:
  """A positive int (not a bool, which numpy and Python also call an int)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1


def _check_pair(value, name: str, what: str):
  """(int, int) from an int or a pair of positive ints, or a one-line error."""
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(np.asarray(value).reshape(-1).tolist())
  if len(pair) != 2 or not all(_is_count(v) for v in pair):
    raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints ({what}); got "
                     f"{value!r}")
  return int(pair[0]), int(pair[1])


def _check_feature_mask(feature_mask, images):
  """((H, W) int32 feature index per pixel, number of features) from the user's ids, or a one-line error.

  Ids may be any integers (a grid, superpixel labels, ...): they are relabelled 0..F-1 in sorted order, which
  is captum's order when the ids are 0..F-1 already.
  """
  mask = np.asarray(feature_mask)
  size = tuple(images.shape[1:3])
  if mask.shape != size or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
    raise ValueError(f"feature_mask must be an (H, W) = {size} integer array giving each pixel's feature id (e.g. "
                     f"cnnjax.explain.perturbation.grid_mask({size[0]}, {size[1]}, 8)); got shape {mask.shape}, "
                     f"dtype {mask.dtype}")
  ids, index = np.unique(mask, return_inverse=True)
  return index.reshape(size).astype(np.int32), len(ids)


def grid_mask(height: int, width: int, cell) -> np.ndarray:
  """(height, width) int32 feature mask of `cell`-sized squares (or (ch, cw) rectangles), numbered row by row;
  the last row and column of cells are cut off at the image's edge."""
  if not (_is_count(height) and _is_count(width)):
    raise ValueError(f"grid_mask needs a positive int height and width; got {height!r}, {width!r}")
  cell_h, cell_w = _check_pair(cell, "cell", "the grid cell size in pixels")
  rows = np.arange(height) // cell_h
  cols = np.arange(width) // cell_w
  return (rows[:, None] * (-(-width // cell_w)) + cols[None, :]).astype(np.int32)


def _check_common(model, images, targets, baseline):
  images = features.check_images(images)
  return images, targets_lib.check_targets(model, images, targets), attribution.check_baseline(baseline, images)


def _where_masked(masks, baseline, images):
  """(n, B, H, W, C) copies of the batch with the pixels where `masks` (n, B or 1, H, W) is True set to baseline."""
  return jnp.where(masks[..., None], baseline[None], images[None])


# --- occlusion -----------------------------------------------------------------------------------------------

def _window_rows(size: int, window: int, stride: int) -> np.ndarray:
  """(positions, size) 0/1 rows: which pixels each window position covers along one axis.

  captum's positions: the first window at 0, then every `stride` pixels until the last covers the far edge
  (ceil((size - window) / stride) + 1 of them); the last may hang over the edge and is cut off there.
  """
  positions = math.ceil((size - window) / stride) + 1
  starts = stride * np.arange(positions)[:, None]
  pixels = np.arange(size)[None, :]
  return ((pixels >= starts) & (pixels < starts + window)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model", "window", "strides", "chunk"))
def _occlusion(model, variables, images, targets, baseline, window, strides, chunk):
  model = features.unwrap_model(model)
  rows = _window_rows(images.shape[1], window[0], strides[0])
  cols = _window_rows(images.shape[2], window[1], strides[1])
  rows_j, cols_j = jnp.asarray(rows, bool), jnp.asarray(cols, bool)

  def perturb(indices):
    row, col = jnp.divmod(indices, len(cols))
    windows = rows_j[row][:, :, None] & cols_j[col][:, None, :]  # (n, H, W)
    return _where_masked(windows[:, None], baseline, images)

  count = len(rows) * len(cols)
  drops = _unperturbed_scores(model, variables, images, targets)[None] - _perturbed_scores(
      model, variables, targets, perturb, count, chunk)
  drops = drops.reshape(len(rows), len(cols), *drops.shape[1:])
  # Windows are products of a row band and a column band, so the sum over the windows covering each pixel and
  # their count are separable: rows^T D cols, and row coverage x column coverage (captum's `weights`).
  total = jnp.einsum("ijbk,ih,jw->bkhw", drops, rows, cols)
  coverage = rows.sum(0)[:, None] * cols.sum(0)[None, :]
  return _per_channel(total / coverage, images, targets)


def occlusion(model, variables, images, targets, *, window, strides=1, baseline=0.0,
              chunk_size: Optional[int] = None) -> jax.Array:
  """(B, H, W, C) occlusion sensitivity (Zeiler & Fergus 2014, "Visualizing and understanding convolutional
  networks"; captum's Occlusion): each pixel's mean score drop over the windows covering it.

  Args:
    window: (height, width) of the occluding patch, or an int for a square; it spans all channels (captum's
      sliding_window_shapes=(C, height, width)).
    strides: (sh, sw) or an int, the step between window positions; at most the window, so every pixel is
      covered. Windows start at 0 and step until one reaches the far edge; the last is cut off there.
    baseline: what occluded pixels become: a scalar, an (H, W, C) image or a (B, H, W, C) batch.
    chunk_size: window positions per model call (each a copy of the batch); default: sampling.CHUNK_BYTES.
  Returns:
    (B, H, W, C) attributions, equal across channels ((B, K, H, W, C) for (B, K) targets): score(x) minus
    score(x occluded), averaged over the windows that cover the pixel.
  """
  images, targets, baseline = _check_common(model, images, targets, baseline)
  size = tuple(images.shape[1:3])
  window = _check_pair(window, "window", "the occluding patch in pixels")
  strides = _check_pair(strides, "strides", "the step between window positions")
  if window[0] > size[0] or window[1] > size[1]:
    raise ValueError(f"window {window} is larger than the images' (H, W) = {size}; use a smaller window")
  # As captum: a stride longer than the window would skip pixels (unless the window spans that axis).
  if any(s > w and w < d for s, w, d in zip(strides, window, size)):
    raise ValueError(f"strides {strides} must be at most the window {window} so that every pixel is occluded; "
                     "use smaller strides")
  positions = math.prod(math.ceil((d - w) / s) + 1 for d, w, s in zip(size, window, strides))
  chunk = sampling.check_chunk_size(chunk_size, model, images, positions, "window positions")
  return _occlusion(features.static_model(model), variables, images, targets, baseline, window, strides, chunk)


# --- feature ablation ----------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("model", "count", "chunk"))
def _feature_ablation(model, variables, images, targets, baseline, feature_index, count, chunk):
  model = features.unwrap_model(model)

  def perturb(indices):
    return _where_masked((feature_index[None] == indices[:, None, None])[:, None], baseline, images)

  drops = _unperturbed_scores(model, variables, images, targets)[None] - _perturbed_scores(
      model, variables, targets, perturb, count, chunk)  # (F, B, K)
  # Features do not overlap: each pixel takes its own feature's drop (captum sums drop x mask over features).
  return _per_channel(jnp.moveaxis(drops[feature_index], (2, 3), (0, 1)), images, targets)


def feature_ablation(model, variables, images, targets, *, feature_mask, baseline=0.0,
                     chunk_size: Optional[int] = None) -> jax.Array:
  """(B, H, W, C) feature ablation (captum's FeatureAblation): each pixel gets the score drop when its whole
  feature (all pixels with its id in `feature_mask`, all channels) is replaced by the baseline.

  Args:
    feature_mask: (H, W) integer feature id per pixel, shared by the batch: a grid (`grid_mask`), superpixels or
      any labelling; ids need not be contiguous.
    baseline: a scalar, an (H, W, C) image or a (B, H, W, C) batch.
    chunk_size: features ablated per model call (each a copy of the batch); default: sampling.CHUNK_BYTES.
  Returns:
    (B, H, W, C) attributions, constant over each feature and across channels ((B, K, H, W, C) for (B, K)
    targets): score(x) - score(x with the feature ablated).
  """
  images, targets, baseline = _check_common(model, images, targets, baseline)
  feature_index, count = _check_feature_mask(feature_mask, images)
  chunk = sampling.check_chunk_size(chunk_size, model, images, count, "features")
  return _feature_ablation(features.static_model(model), variables, images, targets, baseline,
                           jnp.asarray(feature_index), count, chunk)


# --- KernelSHAP ----------------------------------------------------------------------------------------------

def _coalition(key, index, count: int):
  """(count,) bool coalition `index` of an image, captum's KernelShap sampler: all features, then none, then
  k ~ p(k) = (M - 1) / (k (M - k)) for 0 < k < M and a uniformly random set of k features.

  Drawing k by p(k) and the set uniformly among the C(M, k) is the Shapley kernel (M - 1) / (C(M, k) k (M - k)),
  so the regression weighs every other sample equally.
  """
  sizes = np.arange(1, count)
  log_p = np.log((count - 1) / (sizes * (count - sizes)))
  size_key, set_key = jax.random.split(key)
  size = jnp.asarray(sizes)[jax.random.categorical(size_key, jnp.asarray(log_p, jnp.float32))]
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(set_key, (count,))))
  return jnp.where(index == 0, True, jnp.where(index == 1, False, rank < size))


def _weighted_least_squares(coalitions, scores, weights):
  """Coefficients (M, K) of sklearn's LinearRegression(fit_intercept=True) with sample weights, as captum fits
  its surrogate: the weighted means are removed, then a least-squares solve on sqrt(weight)-scaled rows (which
  also keeps float32 well conditioned despite the 1e6 endpoint weights)."""
  x = coalitions.astype(jnp.float32)
  total = jnp.sum(weights)
  x_mean = weights @ x / total
  y_mean = weights @ scores / total
  root = jnp.sqrt(weights)[:, None]
  return jnp.linalg.lstsq(root * (x - x_mean), root * (scores - y_mean))[0]


@functools.partial(jax.jit, static_argnames=("model", "count", "samples", "chunk"))
def _kernel_shap(model, variables, images, targets, baseline, feature_index, seed, count, samples, chunk):
  model = features.unwrap_model(model)
  keys = sampling.sample_keys(sampling.image_keys(images, seed), jnp.arange(samples, dtype=jnp.int32))
  # (samples, B, M) bools: small beside the images, and the regression needs them all.
  coalitions = jax.vmap(lambda keys, index: jax.vmap(lambda key: _coalition(key, index, count))(keys))(
      keys, jnp.arange(samples))

  def perturb(indices):
    return _where_masked(~coalitions[indices][:, :, feature_index], baseline, images)

  scores = _perturbed_scores(model, variables, targets, perturb, samples, chunk)  # (samples, B, K)
  weights = jnp.ones(samples, jnp.float32).at[:2].set(KERNEL_SHAP_ENDPOINT_WEIGHT)
  values = jax.vmap(_weighted_least_squares, in_axes=(1, 1, None))(coalitions, scores, weights)  # (B, M, K)
  return _per_channel(jnp.moveaxis(values[:, feature_index], 3, 1), images, targets)


def kernel_shap(model, variables, images, targets, *, feature_mask, samples: Optional[int] = None, baseline=0.0,
                seed: int = 0, chunk_size: Optional[int] = None) -> jax.Array:
  """(B, H, W, C) KernelSHAP values of the features of `feature_mask` (Lundberg & Lee 2017, "A unified approach
  to interpreting model predictions"; captum's KernelShap).

  Coalitions of features are sampled as captum does (the full and the empty one first, weighted 1e6; then k
  features with probability (M-1)/(k(M-k)), a uniform set of k); features outside a coalition take the baseline;
  a weighted linear regression of the scores on the coalitions gives each feature's Shapley value estimate.

  Args:
    feature_mask: (H, W) integer feature id per pixel (a grid from `grid_mask`, superpixels, ...), at least two
      features; ids need not be contiguous.
    samples: coalitions per image, the two endpoints included (captum's n_samples); default 2M + 2048 (the shap
      library's choice for M features). More samples, less noise.
    baseline: a scalar, an (H, W, C) image or a (B, H, W, C) batch.
    seed: with each image's pixels, keys its coalitions (an image gets the same alone as inside a batch).
    chunk_size: coalitions per model call (each a copy of the batch); default: sampling.CHUNK_BYTES.
  Returns:
    (B, H, W, C) values, constant over each feature and across channels ((B, K, H, W, C) for (B, K) targets);
    a feature's values sum, over features, to score(x) - score(baseline) up to the 1e6 endpoint weight.
  """
  images, targets, baseline = _check_common(model, images, targets, baseline)
  feature_index, count = _check_feature_mask(feature_mask, images)
  if count < 2:
    raise ValueError("feature_mask has a single feature, whose Shapley value is just score(x) - score(baseline); "
                     "give a mask of at least two features")
  samples = 2 * count + 2048 if samples is None else samples
  if not _is_count(samples) or samples < 2:
    raise ValueError(f"samples must be an int of at least 2 coalitions (the full and the empty one, then random "
                     f"ones); got {samples!r}")
  chunk = sampling.check_chunk_size(chunk_size, model, images, int(samples), "coalitions")
  return _kernel_shap(features.static_model(model), variables, images, targets, baseline,
                      jnp.asarray(feature_index), jnp.uint32(seed), count, int(samples), chunk)


# --- RISE ----------------------------------------------------------------------------------------------------

def upsampling_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) bilinear upsampling weights as the RISE reference code resizes its grids
  (skimage.transform.resize, order=1, mode='reflect': half-pixel centres, mirrored about the edge pixels)."""
  centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  low = np.floor(centres).astype(int)
  frac = centres - low

  def mirror(index):  # scipy.ndimage's 'mirror' (d c b | a b c d | c b a), what skimage's 'reflect' means
    period = max(2 * size_in - 2, 1)
    index = np.abs(index) % period
    return np.where(index >= size_in, period - index, index)

  weights = np.zeros((size_out, size_in), np.float64)
  np.add.at(weights, (np.arange(size_out), mirror(low)), 1 - frac)
  np.add.at(weights, (np.arange(size_out), mirror(low + 1)), frac)
  return weights.astype(np.float32)


def _rise_mask(key, size, cells: int, probability, rows_up, cols_up):
  """(H, W) mask: a random cells x cells grid of ones (probability `probability`) upsampled bilinearly to
  (cells + 1) x cell size and cropped at a random offset within one cell, as rows_up[crop] @ grid @ cols_up[crop]^T
  (separable, so no full-size upsampled image is ever built)."""
  grid_key, row_key, col_key = jax.random.split(key, 3)
  grid = (jax.random.uniform(grid_key, (cells, cells)) < probability).astype(jnp.float32)
  cell_h, cell_w = rows_up.shape[0] // (cells + 1), cols_up.shape[0] // (cells + 1)
  rows = jax.lax.dynamic_slice_in_dim(rows_up, jax.random.randint(row_key, (), 0, cell_h), size[0])
  cols = jax.lax.dynamic_slice_in_dim(cols_up, jax.random.randint(col_key, (), 0, cell_w), size[1])
  return rows @ grid @ cols.T


@functools.partial(jax.jit, static_argnames=("model", "masks", "cells", "chunk"))
def _rise(model, variables, images, targets, probability, seed, masks, cells, chunk):
  model = features.unwrap_model(model)
  size = images.shape[1:3]
  rows_up, cols_up = (jnp.asarray(upsampling_matrix(cells, (cells + 1) * -(-d // cells))) for d in size)
  keys = sampling.image_keys(images, seed)

  def evaluate(indices):
    # Masks are made here, per chunk, from their keys: never more than `chunk` x B of them exist at once.
    chunk_masks = jax.vmap(jax.vmap(lambda key: _rise_mask(key, size, cells, probability, rows_up, cols_up)))(
        sampling.sample_keys(keys, indices))  # (n, B, H, W)
    masked = images[None] * chunk_masks[..., None].astype(images.dtype)
    return jnp.einsum("nbk,nbhw->bkhw", _scores(model, variables, targets, masked), chunk_masks)

  total = sampling.chunked_sum(evaluate, masks, chunk)
  return targets.output(total / (masks * probability))


def rise(model, variables, images, targets, *, masks: int = 4000, cells: int = 7, probability: float = 0.5,
         seed: int = 0, chunk_size: Optional[int] = None) -> jax.Array:
  """(B, H, W) RISE saliency (Petsiuk et al. 2018, "RISE: Randomized input sampling for explanation of black-box
  models"): the mean of random smooth masks weighted by the score of the image seen through each,
  sum_i score(I * M_i) M_i / (N p).

  Args:
    masks: N, random masks per image. cells: s, the masks' s x s grid of random cells (each kept with
      `probability` p), upsampled bilinearly to (s + 1) ceil(H / s) pixels and shifted by up to one cell.
    seed: with each image's pixels, keys its masks (an image gets the same masks alone as inside a batch).
    chunk_size: masks per model call (each a copy of the batch); default: sampling.CHUNK_BYTES. Masks are
      generated per chunk, so memory does not grow with `masks`.
  Returns:
    (B, H, W) saliency ((B, K, H, W) for (B, K) targets), in units of the score. The paper scores the softmax
    probability: pass `targets=lambda logits: jax.nn.softmax(logits)[jnp.arange(len(logits)), classes]` for
    that (defined once, so it compiles once); a class index scores the logit.
  """
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  if not _is_count(masks):
    raise ValueError(f"masks must be a positive int, the number of random masks per image; got {masks!r}")
  if not _is_count(cells) or cells > min(images.shape[1:3]):
    raise ValueError(f"cells must be an int from 1 to the image size {min(images.shape[1:3])}, the masks' grid "
                     f"size; got {cells!r}")
  if not 0 < probability <= 1:
    raise ValueError(f"probability must be in (0, 1], the chance a grid cell is kept; got {probability!r}")
  chunk = sampling.check_chunk_size(chunk_size, model, images, int(masks), "masks")
  return _rise(features.static_model(model), variables, images, targets, jnp.float32(probability),
               jnp.uint32(seed), int(masks), int(cells), chunk)
