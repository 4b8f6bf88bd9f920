"""Activation maximization (Erhan et al. 2009; Simonyan et al. 2014; Yosinski et al. 2015): gradient ascent
on the input, from noise, of a class logit or of a filter of an intermediate layer, with L2, total
variation, jitter and blur regularisers. All steps run inside one jitted `lax.scan`."""
import functools
from typing import Optional, Sequence, Union

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.explain import features
from cnnjax.models import introspect

Units = Sequence[Union[int, Sequence[int]]]


def _unit_weights(units: Units, count: int, what: str) -> np.ndarray:
  """(images, count) weights: row i averages the units of entry i (an int, or a list maximized jointly)."""
  weights = np.zeros((len(units), count), np.float32)
  for row, entry in enumerate(units):
    group = [entry] if np.ndim(entry) == 0 else list(entry)
    if not group:
      raise ValueError(f"{what} entry {row} is empty; give an index or a non-empty list of indices")
    for unit in group:
      if not float(unit).is_integer() or not 0 <= int(unit) < count:
        raise ValueError(f"{what} {unit!r} is out of range; valid {what} are 0..{count - 1}")
      weights[row, int(unit)] += 1 / len(group)
  return weights


def total_variation(images):
  """Mean squared difference between neighbouring pixels, per image."""
  down = jnp.mean((images[:, 1:] - images[:, :-1]) ** 2, axis=(1, 2, 3))
  right = jnp.mean((images[:, :, 1:] - images[:, :, :-1]) ** 2, axis=(1, 2, 3))
  return down + right


def _unit_values(model, variables, images, layer):
  """(B, units): the logits, or a layer's channels averaged over space."""
  if layer is None:
    return features.apply_logits(model, variables, images).astype(jnp.float32)
  outputs = introspect.capture_outputs(model, variables, images, [layer.name])[1][layer.name].astype(jnp.float32)
  return jnp.mean(outputs, axis=tuple(range(1, outputs.ndim - 1)))


@functools.partial(jax.jit, static_argnames=("model", "layer", "shape", "steps", "jitter", "blur"))
def _maximize(model, variables, weights, seed, lr, l2, tv, *, layer, shape, steps, jitter, blur):
  model = features.unwrap_model(model)
  key = jax.random.PRNGKey(seed)
  init_key, key = jax.random.split(key)
  images = 0.1 * jax.random.normal(init_key, shape, jnp.float32)
  optimizer = optax.adam(lr)

  def loss(images, shift):
    shifted = jnp.roll(images, shift, axis=(1, 2))  # jitter: robust to small translations
    objective = jnp.sum(weights * _unit_values(model, variables, shifted, layer), axis=1)
    penalties = l2 * jnp.mean(images ** 2, axis=(1, 2, 3)) + tv * total_variation(images)
    return jnp.sum(penalties - objective)

  def step(carry, step_key):
    images, state, index = carry
    shift = jax.random.randint(step_key, (2,), -jitter, jitter + 1) if jitter else jnp.zeros(2, jnp.int32)
    grads = jax.grad(loss)(images, shift)
    updates, state = optimizer.update(grads, state, images)
    images = optax.apply_updates(images, updates)
    if blur:  # every 4th step, as Yosinski et al.: steady blurring would wash the image out
      blurred = dm_pix.gaussian_blur(images, blur, kernel_size=2 * int(np.ceil(2 * blur)) + 1)
      images = jnp.where(index % 4 == 3, blurred, images)
    return (images, state, index + 1), None

  (images, _, _), _ = jax.lax.scan(step, (images, optimizer.init(images), 0), jax.random.split(key, steps))
  return images


def maximize_activation(model, variables, targets: Optional[Units] = None, *, input_shape: Sequence[int],
                        layer: Optional[str] = None, filters: Optional[Units] = None, steps: int = 200,
                        lr: float = 0.05, l2: float = 1e-3, tv: float = 1e-2, jitter: int = 0,
                        blur: float = 0.0, seed: int = 0) -> jax.Array:
  """(N, H, W, C) inputs, one per entry, that maximize the chosen units, in the model's input space.

  Classes: `targets`, each a class index or a list of indices maximized jointly in one image (keras-vis
  `filter_indices`). A layer's filters: `layer=NAME, filters=[...]`, the mean of a channel's output over
  space (entries may again be lists). input_shape: (H, W, C). The objective is logit/activation minus
  `l2` * mean(x^2) and `tv` * total variation; `jitter` randomly rolls the image by up to that many pixels
  each step; `blur` is the sigma (pixels) of a Gaussian blur applied every 4 steps (0: none).
  """
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (H, W, C); got {input_shape}")
  if int(steps) < 1 or int(jitter) < 0 or blur < 0 or lr <= 0:
    raise ValueError(f"need steps >= 1, lr > 0, jitter >= 0, blur >= 0; got steps={steps}, lr={lr}, "
                     f"jitter={jitter}, blur={blur}")
  if layer is None:
    if filters is not None or targets is None:
      raise ValueError("give targets (class indices) for classes, or layer=NAME with filters=[...] for a "
                       "layer's channels")
    info, units, what = None, targets, "targets"
    count = features.num_classes(model, input_shape)
  else:
    if targets is not None or filters is None:
      raise ValueError(f"with layer={layer!r} give filters=[channel indices] (and no targets)")
    info, units, what = features.resolve_layer(model, input_shape, layer), filters, "filters"
    count = info.shape[-1]
  if isinstance(units, (int, np.integer)):
    units = [units]
  weights = _unit_weights(units, count, what)
  return _maximize(features.static_model(model), variables, jnp.asarray(weights), jnp.uint32(seed),
                   jnp.float32(lr), jnp.float32(l2), jnp.float32(tv), layer=info,
                   shape=(len(weights), *input_shape), steps=int(steps), jitter=int(jitter),
                   blur=float(blur))
