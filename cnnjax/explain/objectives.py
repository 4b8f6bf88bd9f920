"""What feature visualization maximizes, as small composable objectives (lucid `optvis/objectives.py`): a class
logit or probability, a channel, a neuron, a direction in a layer's activation space, a diversity term over the
batch, and their weighted sums and differences (`a + b`, `a - 2 * b`).

An `Objective` scores a batch of B images: `objective(logits, layers) -> (B,)`, one score per image, from the logits
and the outputs of the layers it names (`objective.layers`). Indices may be one per image ((B,) classes or channels),
so one objective drives a whole batch of different visualizations in one jitted call. Objectives are pytrees: their
indices and vectors are traced, so new indices of the same shape do not recompile.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Indices = Union[int, Sequence[int]]


@flax.struct.dataclass
class Objective:
  """A per-image score to maximize: `score(logits, layers, **params, **options) -> (B,)`."""
  score: Callable = flax.struct.field(pytree_node=False)  # a module-level function (hashable, so jit caches)
  params: Dict[str, Any]  # arrays the score reads: traced under jit
  options: Tuple[Tuple[str, Any], ...] = flax.struct.field(pytree_node=False, default=())  # static: names, flags
  layers: Tuple[str, ...] = flax.struct.field(pytree_node=False, default=())  # layer outputs the score reads
  layer: Optional[str] = flax.struct.field(pytree_node=False, default=None)  # whose units params['units'] index

  def __call__(self, logits, layers: Dict[str, jax.Array]) -> jax.Array:
    return self.score(logits, layers, **self.params, **dict(self.options))

  def __add__(self, other):
    return combine((self, as_objective(other)), (1.0, 1.0))

  def __radd__(self, other):
    return combine((as_objective(other), self), (1.0, 1.0))

  def __sub__(self, other):
    return combine((self, as_objective(other)), (1.0, -1.0))

  def __rsub__(self, other):
    return combine((as_objective(other), self), (1.0, -1.0))

  def __mul__(self, factor):
    if not isinstance(factor, (int, float)):
      raise ValueError(f"an objective can be scaled by a number; got {type(factor).__name__} (add or subtract "
                       "objectives to combine them)")
    return combine((self,), (float(factor),))

  __rmul__ = __mul__

  def __neg__(self):
    return combine((self,), (-1.0,))

  def leaves(self) -> Tuple["Objective", ...]:
    """The objectives this one is a weighted sum of (itself when it is not a sum)."""
    if self.score is not _weighted_sum:
      return (self,)
    return tuple(leaf for term in self.params["terms"] for leaf in term.leaves())


def _weighted_sum(logits, layers, terms, coefficients):
  return sum(coefficient * term(logits, layers) for term, coefficient in zip(terms, coefficients))


def _constant(logits, layers, value):
  return jnp.broadcast_to(value, logits.shape[:1]).astype(jnp.float32)


def as_objective(value) -> Objective:
  """An objective as it is; a number as a constant objective (so `objective + 1` works, as in lucid)."""
  if isinstance(value, Objective):
    return value
  if isinstance(value, (int, float)):
    return Objective(_constant, {"value": jnp.float32(value)})
  raise ValueError(f"cannot combine an objective with {type(value).__name__}; use objectives or numbers")


def combine(terms: Sequence[Objective], coefficients: Sequence[float]) -> Objective:
  """sum_k coefficients[k] * terms[k](...), one score per image."""
  layers = tuple(dict.fromkeys(name for term in terms for name in term.layers))
  return Objective(_weighted_sum, {"terms": tuple(terms), "coefficients": tuple(jnp.float32(c) for c in coefficients)},
                   layers=layers)


def _indices(indices: Indices, what: str) -> np.ndarray:
  values = np.asarray(indices)
  if values.ndim > 1 or values.size == 0 or not np.all(np.equal(np.mod(values, 1), 0)) or np.any(values < 0):
    raise ValueError(f"{what} must be an index or a list of indices (one per image), each >= 0; got {indices!r}")
  return values.astype(np.int32)


def _pick(values, units):
  """values[b, units[b]] for (B, N) values and scalar or (B,) units."""
  units = jnp.broadcast_to(units, values.shape[:1])
  return jnp.take_along_axis(values, units[:, None], axis=1)[:, 0].astype(jnp.float32)


def _spatial_mean(outputs):
  """(B, C): a layer's output averaged over every axis between batch and channels."""
  return jnp.mean(outputs.astype(jnp.float32), axis=tuple(range(1, outputs.ndim - 1)))


def _class_logit(logits, layers, units):
  return _pick(logits, units)


def _class_probability(logits, layers, units, log):
  log_probabilities = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return _pick(log_probabilities if log else jnp.exp(log_probabilities), units)


def _channel(logits, layers, units, name):
  return _pick(_spatial_mean(layers[name]), units)


def _neuron(logits, layers, units, name, row, col):
  return _pick(layers[name][:, row, col].astype(jnp.float32), units)


def _direction(logits, layers, vectors, name, cossim_pow):
  outputs = layers[name].astype(jnp.float32)
  vectors = jnp.broadcast_to(vectors, (outputs.shape[0], outputs.shape[-1]))
  vectors = vectors.reshape((outputs.shape[0],) + (1,) * (outputs.ndim - 2) + (outputs.shape[-1],))
  dots = jnp.sum(outputs * vectors, axis=-1)
  cosines = dots / (1e-4 + jnp.linalg.norm(outputs, axis=-1)) / (1e-4 + jnp.linalg.norm(vectors, axis=-1))
  # lucid _dot_cossim: cosines floored at 0.1 so the power never flips the sign or vanishes
  weighted = dots * jnp.maximum(0.1, cosines) ** cossim_pow
  return jnp.mean(weighted, axis=tuple(range(1, weighted.ndim)))


def _diversity(logits, layers, name):
  outputs = layers[name].astype(jnp.float32)
  flat = outputs.reshape(outputs.shape[0], -1, outputs.shape[-1])
  grams = jnp.einsum("bpc,bpd->bcd", flat, flat).reshape(outputs.shape[0], -1)
  grams = grams / jnp.maximum(jnp.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
  similarity = grams @ grams.T
  return (jnp.sum(similarity, axis=1) - jnp.diagonal(similarity)) / outputs.shape[0]


def _mean_of_units(logits, layers, weights, name):
  values = logits.astype(jnp.float32) if name is None else _spatial_mean(layers[name])
  return jnp.sum(weights * values, axis=1)


def mean_of_units(weights, layer: Optional[str] = None) -> Objective:
  """sum_u weights[b, u] * unit u for image b: the logits (`layer=None`) or `layer`'s channels averaged over space.

  Args:
    weights: (B, units) float weights, e.g. row b averaging the classes image b maximizes jointly (keras-vis
      `filter_indices` lists, which `maximize_activation(targets=[[3, 5], 1])` turns into weights).
    layer: a layer name, or None for the logits.
  Returns:
    the objective.
  """
  weights = np.asarray(weights, np.float32)
  if weights.ndim != 2:
    raise ValueError(f"unit weights must be (B, units); got shape {weights.shape}")
  return Objective(_mean_of_units, {"weights": weights}, (("name", layer),), (layer,) if layer else (), layer)


def class_logit(classes: Indices) -> Objective:
  """The logit of `classes` (lucid `class_logit`): one index for every image, or one per image.

  Args:
    classes: a class index, or a list of B indices (image b maximizes classes[b]).
  Returns:
    the objective.
  """
  return Objective(_class_logit, {"units": _indices(classes, "classes")})


def class_probability(classes: Indices, *, log: bool = False) -> Objective:
  """The softmax probability of `classes` (or its log with `log=True`): unlike the logit, raising it also lowers
  the other classes' logits, so the image is of this class rather than of every class at once."""
  return Objective(_class_probability, {"units": _indices(classes, "classes")}, (("log", bool(log)),))


def channel(layer: str, channels: Indices) -> Objective:
  """The mean over space of channel `channels` of `layer`'s output (lucid `channel`); per image as `class_logit`."""
  return Objective(_channel, {"units": _indices(channels, "channels")}, (("name", layer),), (layer,), layer)


def neuron(layer: str, channels: Indices, row: Optional[int] = None, col: Optional[int] = None) -> Objective:
  """Channel `channels` of `layer` at one position, the centre by default (lucid `neuron`: the bottom-right of the
  central 2x2 for even sizes); `row`/`col` are resolved when the layer's size is known (`resolve`)."""
  return Objective(_neuron, {"units": _indices(channels, "channels")}, (("name", layer), ("row", row), ("col", col)),
                   (layer,), layer)


def direction(layer: str, vectors, *, cossim_pow: float = 0.0) -> Objective:
  """The mean over positions of <output, vector> in `layer`'s activation space (lucid `direction`); with
  `cossim_pow` > 0 each dot product is weighted by cos(output, vector)**cossim_pow, favouring alignment over size.

  Args:
    layer: a layer name.
    vectors: (C,) one direction for every image, or (B, C) one per image.
    cossim_pow: lucid's exponent (0: the plain dot product).
  Returns:
    the objective.
  """
  vectors = np.asarray(vectors, np.float32)
  if vectors.ndim not in (1, 2) or vectors.shape[-1] == 0:
    raise ValueError(f"direction vectors must be (C,) or (B, C); got shape {vectors.shape}")
  return Objective(_direction, {"vectors": vectors}, (("name", layer), ("cossim_pow", float(cossim_pow))), (layer,),
                   layer)


def diversity(layer: str) -> Objective:
  """Each image's summed cosine similarity between the Gram matrix of its `layer` output and those of the other
  images, over B (lucid `diversity`; summed over the batch it is lucid's value). Subtract it to make a batch of
  visualizations of one unit differ from each other: `channel(l, 3) - 100 * diversity(l)`."""
  return Objective(_diversity, {}, (("name", layer),), (layer,))


def batch_size(objective: Objective) -> Optional[int]:
  """The batch the per-image indices and vectors of `objective` imply (None: any), or a one-line error."""
  sizes = set()
  for leaf in objective.leaves():
    for key, per_image_ndim in (("units", 1), ("vectors", 2), ("weights", 2)):
      value = leaf.params.get(key)
      if value is not None and np.ndim(value) == per_image_ndim:
        sizes.add(len(value))
  if len(sizes) > 1:
    raise ValueError(f"the objective's terms give indices for different numbers of images ({sorted(sizes)}); give "
                     "one index per image in every term, or a single index")
  return sizes.pop() if sizes else None


def resolve(objective: Objective, logit_count: int, layer_shapes: Dict[str, Tuple[int, ...]]) -> Objective:
  """`objective` checked against the model (indices in range, vectors of the layer's width) with neuron positions
  filled in; a one-line error otherwise. `layer_shapes`: each named layer's output shape, batch axis first."""
  if objective.score is _weighted_sum:
    terms = tuple(resolve(term, logit_count, layer_shapes) for term in objective.params["terms"])
    return objective.replace(params={**objective.params, "terms": terms})
  params, options = objective.params, dict(objective.options)
  width = logit_count if objective.layer is None else layer_shapes[objective.layer][-1]
  what = "classes" if objective.layer is None else f"channels of {objective.layer!r}"
  if "units" in params and np.any(params["units"] >= width):
    raise ValueError(f"{what} index {int(np.max(params['units']))} is out of range; valid {what} are "
                     f"0..{width - 1}")
  if "weights" in params and params["weights"].shape[-1] != width:
    raise ValueError(f"unit weights have {params['weights'].shape[-1]} columns; there are {width} {what}")
  if "vectors" in params and params["vectors"].shape[-1] != width:
    raise ValueError(f"direction vectors have {params['vectors'].shape[-1]} values; {objective.layer!r} has "
                     f"{width} channels")
  if objective.score is _neuron:
    shape = layer_shapes[objective.layer]
    if len(shape) != 4:
      raise ValueError(f"neuron needs a (B, H, W, C) layer; {objective.layer!r} outputs shape {shape}")
    row = shape[1] // 2 if options["row"] is None else options["row"]
    col = shape[2] // 2 if options["col"] is None else options["col"]
    if not (0 <= row < shape[1] and 0 <= col < shape[2]):
      raise ValueError(f"neuron position ({row}, {col}) is outside {objective.layer!r}'s {shape[1]}x{shape[2]} map")
    options.update(row=int(row), col=int(col))
  return objective.replace(options=tuple(options.items()))
