"""What an explanation explains: one class per image `(B,)`, K classes per image `(B, K)`, or any scalar of the
logits given as a function `(logits) -> (B,)`, all passed in the same `targets` argument of every explainer.

Explainers compute with a K axis throughout: the model runs forward once, and the K explanations come from one
pullback per target vectorised over K cotangents (`pullback`), not from K forward passes. Outputs keep the K axis
only when the caller gave `(B, K)` classes (`Targets.output`).
"""
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.models.introspect import num_classes


@flax.struct.dataclass
class Targets:
  """Checked targets, a pytree that passes into jit: the indices are traced, the function and `multi` static
  (so a target function is compiled per function object: define it once, not as a new lambda per call)."""
  indices: jax.Array  # (B, K) int32 class indices; (B, 1) zeros when `function` picks the score
  function: Optional[Callable] = flax.struct.field(pytree_node=False, default=None)
  multi: bool = flax.struct.field(pytree_node=False, default=False)  # (B, K) given: outputs keep the K axis

  @property
  def count(self) -> int:
    """K, the explanations per image."""
    return self.indices.shape[1]

  def scores(self, logits) -> jax.Array:
    """(B, K) float32 scores the explanations are of (float32 so bfloat16 models differentiate accurately)."""
    if self.function is not None:
      values = jnp.asarray(self.function(logits))
      if values.shape != logits.shape[:1]:
        raise ValueError(f"the target function must map logits of shape {tuple(logits.shape)} to one score per "
                         f"image, shape ({logits.shape[0]},); it returned shape {tuple(values.shape)}")
      return values.astype(jnp.float32)[:, None]
    return jnp.take_along_axis(logits, self.indices, axis=1).astype(jnp.float32)

  def output(self, explanations):
    """(B, K, ...) explanations as the caller asked: (B, K, ...) for (B, K) classes, else (B, ...)."""
    return explanations if self.multi else explanations[:, 0]

  def tile(self, copies: int) -> "Targets":
    """The targets of `copies` copies of the batch stacked along the batch axis (as `jnp.tile` stacks them).

    A target function sees the stacked logits: it must score each row by itself (as every per-image scalar does).
    """
    return self.replace(indices=jnp.tile(self.indices, (copies, 1)))

  def take(self, rows) -> "Targets":
    """The targets of the images `rows` of the batch."""
    return self.replace(indices=self.indices[rows])


def check_targets(model, images, targets) -> Targets:
  """`targets` as `Targets`, or a one-line error: an int (every image), (B,) or (B, K) class indices within the
  model's classes, or a function of the logits returning one score per image."""
  if isinstance(targets, Targets):
    return targets
  batch = images.shape[0]
  if callable(targets):
    return Targets(jnp.zeros((batch, 1), jnp.int32), function=targets)
  classes = num_classes(model, images.shape[1:], images.dtype)
  traced = isinstance(targets, jax.core.Tracer)
  targets = targets if traced else np.asarray(targets)
  if targets.ndim == 0:
    targets = (jnp if traced else np).broadcast_to(targets, (batch,))  # numpy: checkable inside a caller's jit
  if targets.ndim not in (1, 2) or targets.shape[0] != batch or (targets.ndim == 2 and targets.shape[1] < 1):
    raise ValueError(f"targets must be one class per image, shape ({batch},), K classes per image, shape ({batch}, "
                     f"K), or a function of the logits returning ({batch},) scores; got shape "
                     f"{tuple(targets.shape)}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integer class indices (or a function of the logits); got dtype "
                     f"{targets.dtype}")
  if not traced:
    bad = targets[(targets < 0) | (targets >= classes)]
    if bad.size:
      raise ValueError(f"target {int(bad[0])} is out of range; valid targets are 0..{classes - 1} "
                       f"({classes} classes)")
  multi = targets.ndim == 2
  indices = jnp.asarray(targets, jnp.int32)
  return Targets(indices if multi else indices[:, None], multi=multi)


def pullback(function, inputs, targets: Targets, *, has_aux: bool = False):
  """The gradient of each target's score with respect to `inputs`, K targets from one forward pass.

  Args:
    function: inputs -> logits (B, classes), or (logits, aux) with `has_aux`.
    inputs: what is differentiated (the images, or a probe at a layer), batch axis first.
    targets: `Targets` of the batch.
  Returns:
    (scores (B, K), gradients (B, K, *inputs.shape[1:]), aux if has_aux). Images are independent in inference
    mode, so the gradient of the batch sum of target k is each image's own gradient for its target k.
  """
  def batch_scores(inputs):
    if has_aux:
      logits, aux = function(inputs)
      return targets.scores(logits), aux
    return targets.scores(function(inputs)), None

  scores, vjp, aux = jax.vjp(batch_scores, inputs, has_aux=True)
  cotangents = jnp.broadcast_to(jnp.eye(targets.count, dtype=scores.dtype)[:, None, :],
                                (targets.count, *scores.shape))
  if targets.count == 1:  # the common case compiles to the plain gradient, without a vmap of size one
    gradients = vjp(cotangents[0])[0][:, None]
  else:
    gradients = jnp.moveaxis(jax.vmap(vjp)(cotangents)[0], 0, 1)
  return (scores, gradients, aux) if has_aux else (scores, gradients)
