"""The train state and the pure train / eval steps.

`train_step(state, batch)` is one function for every way of running it: under `jax.jit` with the batch
sharded over a device Mesh (the default path; XLA inserts the cross-device reductions, and BatchNorm
statistics are over the global batch), or under `jax.pmap` with `axis_name`, where gradients, BatchNorm
statistics (the model's `axis_name`) and metrics are averaged with `lax.pmean`.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnnjax import data as data_lib
from cnnjax.models import introspect


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs besides the data position (which the epoch counter gives)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape, seed: int) -> TrainState:
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = jax.jit(functools.partial(model.init, train=False))(
      init_rng, jnp.zeros((1, *image_shape), jnp.float32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    rng=state_rng, tx=tx)


def prepare_images(images, preprocess: Optional[dict], augment: Optional[dict] = None, key=None):
  """uint8 batch -> float model input; augmentation (Keras ImageDataGenerator settings) before scaling.
  preprocess None: the inputs are already the model's (a backbone's features)."""
  images = images.astype(jnp.float32)
  if augment:
    images = data_lib.augment(images, key, **augment)
  return images if preprocess is None else data_lib.preprocess(images, **preprocess)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  return soft_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing))


def soft_cross_entropy(logits, targets):
  """Per-image cross-entropy against (B, classes) target distributions."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def mixup_weights(key, batch_size: int, alpha: float):
  """(lam, partner) of mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", 2018): one
  lam ~ Beta(alpha, alpha) per batch and a random permutation pairing each image with another, as the paper's
  reference code draws them; `mix` applies them to the images and to every form of their targets alike.

  Args:
    key: PRNG key of this step.
    batch_size: images in the batch.
    alpha: the Beta distribution's parameter; small values keep most mixes close to one image.
  Returns:
    (scalar lam, (batch_size,) int partner indices).
  """
  weight_key, order_key = jax.random.split(key)
  return jax.random.beta(weight_key, alpha, alpha), jax.random.permutation(order_key, batch_size)


def mix(values, lam, partner):
  """lam x_i + (1 - lam) x_partner[i] along the batch axis, in the values' dtype."""
  return (lam * values + (1 - lam) * values[partner]).astype(values.dtype)


def train_step(state: TrainState, batch, *, model: nn.Module, num_classes: int, preprocess: Optional[dict],
               augment: Optional[dict] = None, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
               learning_rate_fn: Optional[Callable] = None, axis_name: Optional[str] = None,
               frozen: Sequence[str] = ()):
  """One optimizer step on `batch` = {'images': uint8 NHWC, 'labels': int}; returns (state, metrics).

  BatchNorm layers among the `frozen` ones normalise with their moving statistics, which stay fixed, as Keras
  runs a non-trainable BatchNormalization (their params are frozen by the optimizer). With mixup_alpha > 0 the
  images and their targets are mixed (`mixup_weights`, `mix`) and the accuracy counts a prediction by the weight
  its class has in the mixed target.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    # Each pmap replica augments and drops out differently, as shards of one global batch do under jit.
    step_rng = jax.random.fold_in(step_rng, lax.axis_index(axis_name))
  augment_rng, dropout_rng = jax.random.split(step_rng)
  images = prepare_images(batch["images"], preprocess, augment, augment_rng)
  targets = optax.smooth_labels(jax.nn.one_hot(batch["labels"], num_classes), label_smoothing)
  hard_targets = jax.nn.one_hot(batch["labels"], num_classes)
  if mixup_alpha > 0:
    lam, partner = mixup_weights(jax.random.fold_in(augment_rng, 1), images.shape[0], mixup_alpha)
    images, targets, hard_targets = (mix(v, lam, partner) for v in (images, targets, hard_targets))

  def loss_fn(params):
    with introspect.frozen_batch_norm(frozen):
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": dropout_rng})
    loss = soft_cross_entropy(logits, targets).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.sum(predicted * hard_targets, -1))}
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
    metrics = lax.pmean(metrics, axis_name)
  metrics["grad_norm"] = optax.tree.norm(grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if learning_rate_fn is not None:
    metrics["learning_rate"] = learning_rate_fn(state.step)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def eval_step(variables, batch, *, model: nn.Module, num_classes: int, preprocess: Optional[dict],
              test_time_flip: bool = False):
  """Sums over the real (mask == 1) images of a batch: loss, correct count, count and confusion matrix.

  With `test_time_flip` each image is scored by the mean of its softmax and its mirror image's (left-right), and the
  loss is the cross-entropy of that mean (test-time augmentation; Krizhevsky et al. 2012 average ten crops and
  their mirrors)."""
  images = prepare_images(batch["images"], preprocess)
  logits = model.apply(variables, images, train=False)
  if test_time_flip:
    mirrored = model.apply(variables, images[:, :, ::-1], train=False)
    logits = jnp.log((jax.nn.softmax(logits) + jax.nn.softmax(mirrored)) / 2)  # log-probabilities: their softmax
  mask = batch["mask"]
  predictions = jnp.argmax(logits, -1)
  confusion = jnp.zeros((num_classes, num_classes), jnp.float32).at[batch["labels"], predictions].add(mask)
  return {
      "loss": jnp.sum(cross_entropy(logits, batch["labels"], num_classes) * mask),
      "correct": jnp.sum((predictions == batch["labels"]) * mask),
      "count": jnp.sum(mask),
      "confusion": confusion,
  }
