"""Class activation maps at one or more feature layers: the gradient CAMs Grad-CAM (Selvaraju et al. 2017),
Grad-CAM++ (Chattopadhay et al. 2018), guided Grad-CAM, XGrad-CAM (Fu et al. 2020), LayerCAM (Jiang et al. 2021)
and HiResCAM (Draelos & Carin 2020); the perturbation CAMs Score-CAM (Wang et al. 2020) and Ablation-CAM (Desai &
Ramaswamy 2020); and Eigen-CAM (Muhammad & Yeasin 2020), each as pytorch-grad-cam defines it.

The gradient CAMs differentiate only the network above the chosen layer, with respect to a zero probe added to
that layer's output (see `features.probe_gradients`): no parameter gradients and no backward pass below the
layer, so a map costs about one forward pass. Score-CAM and Ablation-CAM run the model on many perturbed copies
inside one jitted call, `chunk_size` channels per model call (`sampling.chunked_sum`), and K targets share those
forwards (the logits give every target's score).

Every CAM takes `layer` as one layer name or a sequence of names: maps from several layers are fused as
pytorch-grad-cam's `aggregate_multi_layers` fuses them (`fuse_maps`).
"""
import functools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.explain import backprop, features, gradients, sampling
from cnnjax.explain import targets as targets_lib
from cnnjax.models import introspect

# A map whose maximum is below the smallest normal float32 stays all-zero rather than NaN. The guard is not
# larger because untrained or badly scaled models legitimately give maps of order 1e-12.
_EPSILON = float(jnp.finfo(jnp.float32).tiny)

# pytorch-grad-cam's constants, kept so that the maps match its: Score-CAM's mask normalisation guard, XGrad-CAM's
# guard on a channel's activation sum, and how far below a layer's minimum Ablation-CAM sets an ablated channel
# of a layer whose minimum is not 0.
_SCORE_MASK_EPSILON = 1e-8
_XGRAD_EPSILON = 1e-7
_ABLATION_VALUE = 1e7

# `layer` of every CAM: None (the default CAM layer), one name, or several names whose maps are fused.
LayerArg = Union[None, str, Sequence[str]]


def normalize_maps(maps):
  """Scales each (H, W) map (the last two axes) to [0, 1] by its maximum; an all-zero (or all-negative) map
  becomes zeros."""
  maps = jnp.maximum(maps, 0)
  peak = jnp.max(maps, axis=(-2, -1), keepdims=True)
  return jnp.where(peak > _EPSILON, maps / jnp.where(peak > _EPSILON, peak, 1), 0)


def min_max_maps(maps):
  """Each (H, W) map (the last two axes) shifted to minimum 0 and scaled to maximum 1 (pytorch-grad-cam's
  `scale_cam_image`); a constant map becomes zeros."""
  return normalize_maps(maps - jnp.min(maps, axis=(-2, -1), keepdims=True))


def upsample(maps, size):
  """(..., h, w) maps -> (..., *size) by half-pixel-centre bilinear interpolation, as PyTorch's
  align_corners=False and cv2.resize (pytorch-grad-cam's final resize)."""
  return jax.image.resize(maps, (*maps.shape[:-2], *size), method="bilinear", antialias=False)


def _align_corners_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) bilinear weights with the corner pixels' centres aligned (PyTorch's align_corners=True)."""
  source = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
  low = np.minimum(np.floor(source).astype(int), n_in - 1)
  high = np.minimum(low + 1, n_in - 1)
  weights = np.zeros((n_out, n_in), np.float32)
  np.add.at(weights, (np.arange(n_out), low), 1 - (source - low))
  np.add.at(weights, (np.arange(n_out), high), source - low)
  return weights


def upsample_align_corners(maps, size):
  """(..., h, w) maps -> (..., *size) by bilinear interpolation with aligned corners, as
  torch.nn.UpsamplingBilinear2d (Score-CAM's masks in pytorch-grad-cam; unlike its final resize)."""
  rows = jnp.asarray(_align_corners_weights(maps.shape[-2], size[0]))
  columns = jnp.asarray(_align_corners_weights(maps.shape[-1], size[1]))
  return jnp.einsum("Hh,...hw,Ww->...HW", rows, maps, columns)


def _weighted_channels(activations, weights):
  """(B, h, w, c) activations, (B, K, c) channel weights -> (B, K, h, w) weighted channel sums."""
  return jnp.einsum("bhwc,bkc->bkhw", activations, weights)


# --- gradient CAMs: (activations (B, h, w, c), gradients (B, K, h, w, c)) -> (B, K, h, w) maps before ReLU ---

def gradcam_maps(activations, grads):
  """Grad-CAM: channels weighted by the spatial mean of their gradient.

  Args: activations (B, h, w, c); grads (B, K, h, w, c), one per target. Returns: (B, K, h, w) maps before ReLU.
  """
  return _weighted_channels(activations, jnp.mean(grads, axis=(2, 3)))


def gradcam_plus_plus_maps(activations, grads):
  """Grad-CAM++ in the closed form for an exponentiated score (as pytorch-grad-cam computes it):
  alpha = g^2 / (2 g^2 + sum_ij(A) g^3), weights = sum_ij alpha * relu(g)."""
  grads_2 = grads ** 2
  grads_3 = grads_2 * grads
  activation_sums = jnp.sum(activations, axis=(1, 2), keepdims=True)[:, None]
  denominators = 2 * grads_2 + activation_sums * grads_3
  # Where the gradient vanishes alpha is 0/0; it multiplies relu(g) = 0 there anyway.
  defined = (grads != 0) & (denominators != 0)
  alphas = jnp.where(defined, grads_2 / jnp.where(defined, denominators, 1), 0)
  return _weighted_channels(activations, jnp.sum(alphas * jax.nn.relu(grads), axis=(2, 3)))


def xgradcam_maps(activations, grads):
  """XGrad-CAM: channel weights sum_ij g * A / (sum_ij A + 1e-7), pytorch-grad-cam's XGradCAM."""
  activation_sums = jnp.sum(activations, axis=(1, 2), keepdims=True)[:, None]
  weights = jnp.sum(grads * activations[:, None] / (activation_sums + _XGRAD_EPSILON), axis=(2, 3))
  return _weighted_channels(activations, weights)


def layercam_maps(activations, grads):
  """LayerCAM: each activation weighted by its own positive gradient, summed over channels."""
  return jnp.einsum("bkhwc,bhwc->bkhw", jax.nn.relu(grads), activations)


def hirescam_maps(activations, grads):
  """HiResCAM: each activation weighted by its own gradient, summed over channels."""
  return jnp.einsum("bkhwc,bhwc->bkhw", grads, activations)


GRADIENT_CAMS = {"gradcam": gradcam_maps, "gradcam++": gradcam_plus_plus_maps, "xgradcam": xgradcam_maps,
                 "layercam": layercam_maps, "hirescam": hirescam_maps}


# --- from per-layer maps to the explanation -----------------------------------------------------------

def finish_maps(maps, size):
  """(B, K, h, w) raw maps -> (B, K, *size) in [0, 1]: ReLU, upsampled, scaled by each map's maximum."""
  return normalize_maps(upsample(jax.nn.relu(maps), size))


def fuse_maps(layer_maps: Sequence[jax.Array], size) -> jax.Array:
  """(B, K, *size) maps in [0, 1] from each layer's (B, K, h, w) raw maps.

  One layer: `finish_maps`. Several: pytorch-grad-cam's `aggregate_multi_layers`: each layer's map after ReLU is
  min-max scaled at its own resolution and resized to `size`, then the mean over layers is min-max scaled, so
  every layer counts alike whatever the scale of its activations.
  """
  if len(layer_maps) == 1:
    return finish_maps(layer_maps[0], size)
  scaled = [upsample(min_max_maps(jax.nn.relu(maps.astype(jnp.float32))), size) for maps in layer_maps]
  return min_max_maps(jnp.mean(jnp.stack(scaled), axis=0))


def _as_layers(layer) -> Tuple[features.LayerInfo, ...]:
  return (layer,) if isinstance(layer, features.LayerInfo) else tuple(layer)


def _layer_outputs(model, variables, images, layers):
  """(logits, [(B, h, w, c) float32 output of each layer]) from one forward pass."""
  logits, captured = introspect.capture_outputs(model, variables, images, [info.name for info in layers])
  return logits, [captured[info.name].astype(jnp.float32) for info in layers]


def _probe_gradients(model, variables, images, targets, layers, modifier):
  """[(A, dscore/dA)] at each layer (as `features.probe_gradients`), all from one forward pass and K pullbacks.

  Several layers are probed at once through one flat probe, so that `targets_lib.pullback` (which differentiates
  one array) gives each layer's full gradient: a layer's probe also reaches the layers above it, as in PyTorch.
  """
  if len(layers) == 1:
    return [features.probe_gradients(model, variables, images, targets, layers[0], modifier)]
  backprop.check_reachable(model, images.shape, modifier, images.dtype)
  shapes = [(images.shape[0], *info.shape[1:]) for info in layers]
  splits = np.cumsum([int(np.prod(shape[1:])) for shape in shapes])

  def logits_and_features(flat):
    probes = {info.name: part.reshape(shape) for info, part, shape in
              zip(layers, jnp.split(flat, splits[:-1], axis=1), shapes)}
    with backprop.modified_backprop(modifier):
      logits, captured = introspect.capture_outputs(model, variables, images, list(probes), probes)
    return logits, [captured[info.name] for info in layers]

  flat = jnp.zeros((images.shape[0], int(splits[-1])), jnp.float32)
  _, grads, outputs = targets_lib.pullback(logits_and_features, flat, targets, has_aux=True)
  layer_grads = jnp.split(grads, splits[:-1], axis=2)
  return [(output, grad.reshape(grad.shape[:2] + shape[1:]))
          for output, grad, shape in zip(outputs, layer_grads, shapes)]


def gradient_layer_maps(model, variables, images, targets, layers, modifier=None, weighting="gradcam"):
  """[(B, K, h, w) raw maps] of a gradient CAM (`GRADIENT_CAMS[weighting]`) at each layer."""
  return [GRADIENT_CAMS[weighting](activations.astype(jnp.float32), grads)
          for activations, grads in _probe_gradients(model, variables, images, targets, layers, modifier)]


def class_activation_maps(model, variables, images, targets, layer, modifier=None, weighting="gradcam"):
  """(B, K, H, W) maps in [0, 1] at the input's resolution from one layer (a `LayerInfo`) or several (a tuple,
  fused by `fuse_maps`), weighted by `GRADIENT_CAMS[weighting]` (untraced helper, for use inside jit)."""
  layer_maps = gradient_layer_maps(model, variables, images, targets, _as_layers(layer), modifier, weighting)
  return fuse_maps(layer_maps, images.shape[1:3])


def _channel_scores(score_channels, channels: int, chunk: int, batch: int, count: int):
  """(B, K, channels) scores from `score_channels`: (n,) channel indices -> (n, B, K) target scores.

  Each chunk scatters its scores into their channels' places, so `sampling.chunked_sum` assembles them.
  """
  def evaluate(indices):
    scores = jnp.moveaxis(score_channels(indices), 0, -1)
    return jnp.zeros((batch, count, channels), jnp.float32).at[..., indices].set(scores)
  return sampling.chunked_sum(evaluate, channels, chunk)


def _scorecam_weights(model, variables, images, targets, activations, chunk):
  """(B, K, c) Score-CAM weights of one layer's (B, h, w, c) activations: the softmax over channels of the
  target scores of the images masked by each channel, `chunk` channels per model call.

  A channel that is zero everywhere (common after a ReLU) masks its image to all zeros, so every such channel
  scores the zero image: one forward pass serves them all, and the chunks take each image's live channels first
  and stop once every image's are scored. The weights are the same as scoring every channel (exactly: a skipped
  chunk would have scored the same zero image), at the cost of the live channels only."""
  batch, channels = images.shape[0], activations.shape[-1]
  live = jnp.any(activations != 0, axis=(1, 2))
  by_rank = jnp.argsort(~live, axis=-1, stable=True)  # (B, c): each image's live channels first
  live_ranks = jnp.max(jnp.sum(live, axis=-1))
  zero_logits = features.forward_logits(model, variables, jnp.zeros((1, *images.shape[1:]), images.dtype))
  zero_scores = targets.scores(jnp.broadcast_to(zero_logits, (batch, zero_logits.shape[-1])))

  def masked_scores(ranks):
    # (n, B, H, W) masks: each channel upsampled to the input and min-max scaled, as pytorch-grad-cam's.
    ranked = jnp.take_along_axis(activations, by_rank[:, None, None, ranks], axis=-1)
    masks = upsample_align_corners(jnp.moveaxis(ranked, -1, 0), images.shape[1:3])
    low = jnp.min(masks, axis=(-2, -1), keepdims=True)
    high = jnp.max(masks, axis=(-2, -1), keepdims=True)
    masks = (masks - low) / (high - low + _SCORE_MASK_EPSILON)
    masked = (images[None] * masks[..., None].astype(images.dtype)).reshape(-1, *images.shape[1:])
    logits = features.forward_logits(model, variables, masked)
    return targets.tile(len(ranks)).scores(logits).reshape(len(ranks), batch, targets.count)

  def scores_by_rank(ranks):
    return jax.lax.cond(ranks[0] < live_ranks, masked_scores,
                        lambda ranks: jnp.broadcast_to(zero_scores, (len(ranks), batch, targets.count)), ranks)

  ranked_scores = _channel_scores(scores_by_rank, channels, chunk, batch, targets.count)
  rank_of_channel = jnp.argsort(by_rank, axis=-1)
  return jax.nn.softmax(jnp.take_along_axis(ranked_scores, rank_of_channel[:, None, :], axis=-1), axis=-1)


def score_layer_maps(model, variables, images, targets, layers, chunks):
  """[(B, K, h, w) raw Score-CAM maps] at each layer, `chunks[l]` channels of layer l per model call."""
  _, outputs = _layer_outputs(model, variables, images, layers)
  return [_weighted_channels(activations, _scorecam_weights(model, variables, images, targets, activations, chunk))
          for activations, chunk in zip(outputs, chunks)]


def ablation_fill(activations):
  """(B, 1, 1, 1) what pytorch-grad-cam's AblationLayer writes into an ablated channel of each image: 0 where
  the image's minimum activation at the layer is 0 (as after a ReLU), else that minimum minus 1e7."""
  low = jnp.min(activations, axis=(1, 2, 3), keepdims=True)
  return jnp.where(low == 0, 0.0, low - _ABLATION_VALUE)


def _ablated_scores(model, variables, images, targets, layer, activations, chunk):
  """(B, K, c) target scores with each channel of `layer` ablated in turn, `chunk` channels per model call.

  A channel is ablated by a probe of (fill - A_c) on it; the probes are vmapped with the images unbatched, so
  the network below the layer runs once per call and only the part above it runs per channel.
  """
  channels = activations.shape[-1]
  replacement = ablation_fill(activations) - activations

  def ablated(channel):
    probe = jnp.where(jnp.arange(channels) == channel, replacement, 0)
    return targets.scores(introspect.capture_outputs(model, variables, images, [layer.name], {layer.name: probe})[0])

  return _channel_scores(jax.vmap(ablated), channels, chunk, images.shape[0], targets.count)


def ablation_layer_maps(model, variables, images, targets, layers, chunks):
  """[(B, K, h, w) raw Ablation-CAM maps] at each layer, `chunks[l]` channels of layer l ablated per model call:
  channels weighted by the relative drop (s - s_c) / s of the target's score when channel c is ablated."""
  logits, outputs = _layer_outputs(model, variables, images, layers)
  original = targets.scores(logits)[..., None]
  # Relative to the original score, as pytorch-grad-cam's; where that score is 0 (pytorch-grad-cam divides by zero
  # there) the drop itself is used, so the map stays finite.
  scale = jnp.where(original == 0, 1, original)
  return [_weighted_channels(activations, (original - _ablated_scores(model, variables, images, targets, info,
                                                                      activations, chunk)) / scale)
          for info, activations, chunk in zip(layers, outputs, chunks)]


def eigen_projection(activations):
  """(B, h, w) projection of each image's (B, h, w, c) activations on their first principal component, as
  pytorch-grad-cam's `get_2d_projection` (NaNs as 0, channels centred over positions, first right singular
  vector), with the direction's sign chosen so that the projection correlates non-negatively with the
  channel-summed activation (SVD leaves the sign undefined)."""
  batch, height, width, channels = activations.shape
  flat = activations.astype(jnp.float32).reshape(batch, height * width, channels)
  flat = jnp.where(jnp.isnan(flat), 0, flat)
  centred = flat - jnp.mean(flat, axis=1, keepdims=True)
  _, _, right = jnp.linalg.svd(centred, full_matrices=False)
  projection = jnp.einsum("bpc,bc->bp", centred, right[:, 0])
  # The projection has zero mean, so its dot product with the channel sum is their covariance.
  agreement = jnp.sum(projection * jnp.sum(flat, axis=-1), axis=1, keepdims=True)
  return jnp.where(agreement < 0, -projection, projection).reshape(batch, height, width)


def eigen_layer_maps(model, variables, images, targets, layers):
  """[(B, K, h, w) Eigen-CAM maps] at each layer: the same map for every target (Eigen-CAM has none)."""
  _, outputs = _layer_outputs(model, variables, images, layers)
  return [jnp.broadcast_to(eigen_projection(activations)[:, None], (activations.shape[0], targets.count,
                                                                    *activations.shape[1:3]))
          for activations in outputs]


_LAYER_MAPS = {"gradient": gradient_layer_maps, "score": score_layer_maps, "ablation": ablation_layer_maps,
               "eigen": eigen_layer_maps}


@functools.partial(jax.jit, static_argnames=("model", "layers", "kind", "options"))
def _cam(model, variables, images, targets, layers, kind, options):
  layer_maps = _LAYER_MAPS[kind](features.unwrap_model(model), variables, images, targets, layers, **dict(options))
  return targets.output(fuse_maps(layer_maps, images.shape[1:3]))


@functools.partial(jax.jit, static_argnames=("model", "layers", "modifier"))
def _guided_cam(model, variables, images, targets, layers, modifier):
  model = features.unwrap_model(model)
  maps = class_activation_maps(model, variables, images, targets, layers, modifier)
  guided = gradients.input_gradients(model, variables, images, targets, "guided")
  return targets.output(guided * maps[..., None].astype(guided.dtype))


def resolve_layers(model, input_shape, layer: LayerArg) -> Tuple[features.LayerInfo, ...]:
  """The spatial layers `layer` names (None: the default CAM layer; a name; or a sequence of distinct names)."""
  if layer is None or isinstance(layer, str):
    names = (layer,)
  elif isinstance(layer, (list, tuple)) and layer and all(isinstance(name, str) for name in layer):
    names = tuple(layer)
  else:
    raise ValueError(f"layer must be a layer name, a non-empty list of layer names (their maps are fused) or "
                     f"None (the default CAM layer); got {layer!r}")
  infos = tuple(features.resolve_layer(model, input_shape, name, spatial=True) for name in names)
  resolved = [info.name for info in infos]
  repeated = next((name for name in resolved if resolved.count(name) > 1), None)
  if repeated is not None:
    raise ValueError(f"layer names {repeated!r} more than once in {list(names)}; give each layer once")
  return infos


def _prepare(model, images, targets, layer):
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  return features.static_model(model), images, targets, resolve_layers(model, images.shape[1:], layer)


def _chunks(chunk_size, model, images, layers):
  """Channels per model call at each layer: `chunk_size`, or as many as fit `sampling.CHUNK_BYTES`."""
  if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))):
    raise ValueError(f"chunk_size must be a positive int, channels per model call (or None); got {chunk_size!r}")
  return tuple(sampling.check_chunk_size(chunk_size, model, images, info.shape[-1], "channels")
               for info in layers)


def _gradient_cam(model, variables, images, targets, layer, modifier, weighting):
  model, images, targets, layers = _prepare(model, images, targets, layer)
  options = (("modifier", backprop.check_modifier(modifier)), ("weighting", weighting))
  return _cam(model, variables, images, targets, layers, "gradient", options)


_MAPS_DOC = """
  Args:
    model, variables: a Linen model and its variables (run in inference mode).
    images: a floating (B, H, W, C) batch, preprocessed as the model was trained.
    targets: one class per image (B,) (or an int for all), K classes per image (B, K), or a function
      (logits) -> (B,) scores.
    layer: a layer name, None for the default CAM layer (the last spatial map before global pooling or flatten,
      `features.default_cam_layer`), or a sequence of names whose maps are fused (`fuse_maps`).
  Returns:
    (B, H, W) maps in [0, 1] at the input resolution; (B, K, H, W) for (B, K) targets."""


def _maps_doc(function):
  """Appends the Args and Returns every map-returning CAM shares to its own docstring."""
  if function.__doc__:  # None under python -OO
    function.__doc__ = function.__doc__.rstrip() + "\n" + _MAPS_DOC
  return function


@_maps_doc
def gradcam(model, variables, images, targets, *, layer: LayerArg = None,
            modifier: Optional[str] = None) -> jax.Array:
  """Grad-CAM (Selvaraju et al. 2017): channels weighted by the spatial mean of the target's gradient, from one
  forward pass and K backward passes above the layer.

  modifier: backprop modifier for the ReLUs above the layer (None, 'guided', 'relu')."""
  return _gradient_cam(model, variables, images, targets, layer, modifier, "gradcam")


@_maps_doc
def gradcam_plus_plus(model, variables, images, targets, *, layer: LayerArg = None,
                      modifier: Optional[str] = None) -> jax.Array:
  """Grad-CAM++ (Chattopadhay et al. 2018): channels weighted by sum_ij alpha_ij relu(g_ij), alpha in the closed
  form of pytorch-grad-cam's GradCAMPlusPlus; arguments as `gradcam`."""
  return _gradient_cam(model, variables, images, targets, layer, modifier, "gradcam++")


@_maps_doc
def xgradcam(model, variables, images, targets, *, layer: LayerArg = None,
             modifier: Optional[str] = None) -> jax.Array:
  """XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM"): channels weighted by sum_ij g_ij A_ij / sum_ij A_ij, as
  pytorch-grad-cam's XGradCAM; arguments as `gradcam`."""
  return _gradient_cam(model, variables, images, targets, layer, modifier, "xgradcam")


@_maps_doc
def layercam(model, variables, images, targets, *, layer: LayerArg = None,
             modifier: Optional[str] = None) -> jax.Array:
  """LayerCAM (Jiang et al. 2021): sum_c relu(g_c) * A_c, each position weighted by its own positive gradient
  (informative at shallow layers too), as pytorch-grad-cam's LayerCAM; arguments as `gradcam`."""
  return _gradient_cam(model, variables, images, targets, layer, modifier, "layercam")


@_maps_doc
def hirescam(model, variables, images, targets, *, layer: LayerArg = None,
             modifier: Optional[str] = None) -> jax.Array:
  """HiResCAM (Draelos & Carin 2020): sum_c g_c * A_c, the gradient elementwise rather than averaged, so the map
  shows what the score's first-order terms at the layer come from; as pytorch-grad-cam's HiResCAM. Equals
  Grad-CAM where the gradient is spatially constant (a global-average-pooling and dense head)."""
  return _gradient_cam(model, variables, images, targets, layer, modifier, "hirescam")


@_maps_doc
def scorecam(model, variables, images, targets, *, layer: LayerArg = None,
             chunk_size: Optional[int] = None) -> jax.Array:
  """Score-CAM (Wang et al. 2020): channels weighted by the softmax over channels of the target's score on the
  image masked by each channel (upsampled with aligned corners and min-max scaled), as pytorch-grad-cam's
  ScoreCAM. Costs one forward pass per channel and image, except for channels that are zero everywhere (all
  of them score the zero image, one pass); K targets share them.

  chunk_size: channels per model call, each masking the whole batch (chunk_size x B images per call); default
  as many as fit sampling.CHUNK_BYTES (2 GiB) of activations."""
  model, images, targets, layers = _prepare(model, images, targets, layer)
  chunks = _chunks(chunk_size, model, images, layers)
  return _cam(model, variables, images, targets, layers, "score", (("chunks", chunks),))


@_maps_doc
def ablationcam(model, variables, images, targets, *, layer: LayerArg = None,
                chunk_size: Optional[int] = None) -> jax.Array:
  """Ablation-CAM (Desai & Ramaswamy 2020): channels weighted by the relative drop (s - s_c) / s of the target's
  score when channel c is ablated, as pytorch-grad-cam's AblationCAM: the channel is set to 0 where the image's
  minimum activation at the layer is 0, else to that minimum minus 1e7 (pytorch-grad-cam lowers that value by a
  further 1e7 for each earlier channel in its batch; here every channel gets the same). The network below the
  layer runs once per model call and only the part above it once per channel; K targets share those passes.

  chunk_size: channels ablated per model call (each over the whole batch); default: sampling.CHUNK_BYTES."""
  model, images, targets, layers = _prepare(model, images, targets, layer)
  chunks = _chunks(chunk_size, model, images, layers)
  return _cam(model, variables, images, targets, layers, "ablation", (("chunks", chunks),))


@_maps_doc
def eigencam(model, variables, images, targets, *, layer: LayerArg = None) -> jax.Array:
  """Eigen-CAM (Muhammad & Yeasin 2020): the projection of the layer's activations on their first principal
  component, as pytorch-grad-cam's EigenCAM (`get_2d_projection`), from one forward pass.

  The principal direction's sign is undefined (pytorch-grad-cam keeps whatever LAPACK returns): here it is the
  sign that makes the projection correlate non-negatively with the channel-summed activation, so a layer's
  strongly active regions come out bright. Eigen-CAM does not depend on the target: (B, K) targets give the same
  map K times (targets are still checked)."""
  model, images, targets, layers = _prepare(model, images, targets, layer)
  return _cam(model, variables, images, targets, layers, "eigen", ())


def guided_gradcam(model, variables, images, targets, *, layer: LayerArg = None,
                   modifier: Optional[str] = None) -> jax.Array:
  """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop saliency times the Grad-CAM map (fused over the
  layers when several are given); modifier: as `gradcam`'s, for the Grad-CAM part.

  Returns: (B, H, W, C), (B, K, H, W, C) for (B, K) targets."""
  model, images, targets, layers = _prepare(model, images, targets, layer)
  return _guided_cam(model, variables, images, targets, layers, backprop.check_modifier(modifier))


