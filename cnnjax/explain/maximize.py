"""Feature visualization by activation maximization: gradient ascent, from noise, of a class, a channel, a neuron, a
direction or any combination of them (`objectives`), on an image drawn through a parameterization (`parameterization`)
and seen through random transformations (`transforms`) at every step.

The default follows lucid (Olah et al. 2017, "Feature Visualization"; Mordvintsev et al. 2018, "Differentiable Image
Parameterizations"): a Fourier-domain image with 1/f scaling, decorrelated ImageNet colour and a sigmoid to [0, 1]
pixels, robust to padding, jitter, scaling and rotation, optimised with Adam at lr 0.05; the decay power (1.5) and
the transforms' ranges were tuned for transfer to other networks (bench/feature_vis_transfer.py). `KERAS_VIS` is the
older recipe (Erhan et al. 2009; Simonyan et al. 2014; Yosinski et al. 2015; keras-vis): raw pixels in the model's
input space with L2, total variation, jitter and blur. Every image of the batch is its own visualization (keyed by
the seed and its own objective, so it comes out the same alone as in a batch); each step is one jitted call on the
whole batch.
"""
import dataclasses
import functools
import zlib
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.explain import features
from cnnjax.explain import objectives as objectives_lib
from cnnjax.explain import parameterization as param_lib
from cnnjax.explain import transforms as transforms_lib
from cnnjax.models import introspect

Units = Sequence[Union[int, Sequence[int]]]

# The pre-#17 recipe, for `maximize_activation(..., **KERAS_VIS)`: pixels optimised in the model's input space.
KERAS_VIS = {"param": "pixels", "colour": None, "squash": None, "transforms": (), "l2": 1e-3, "tv": 1e-2}
_PIXELS_SD = {True: 0.01, False: 0.1}  # initial noise: lucid's for squashed images, the keras-vis recipe's for raw


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


def _row_seeds(objective: objectives_lib.Objective, batch: int) -> np.ndarray:
  """(batch,) uint32: a hash of each image's own part of the objective (its indices, vectors, weights) and of how
  many earlier images share it, so an image's noise and transforms do not depend on which other images share the
  batch, and images of the same objective (a diversity batch) still start apart."""
  leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(objective)]
  rows = [b"".join(np.ascontiguousarray(leaf[row] if leaf.ndim and len(leaf) == batch else leaf).tobytes()
                   for leaf in leaves) for row in range(batch)]
  return np.asarray([zlib.crc32(content + str(rows[:row].count(content)).encode())
                     for row, content in enumerate(rows)], np.uint32)


def _initial_parameters(key, shape, param: str, squashed: bool) -> jax.Array:
  """One image's starting parameters: a spectrum (2, C, H, W // 2 + 1) or pixels (H, W, C) of small noise."""
  if param == "fft":
    two, _, *rest = param_lib.spectrum_shape((1, *shape))
    return 0.01 * jax.random.normal(key, (two, *rest), jnp.float32)  # lucid fft_image's sd
  return _PIXELS_SD[squashed] * jax.random.normal(key, shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Recipe:
  """The static half of a call: what is drawn, how it is seen, and what the model reads (hashable for jit)."""
  model: Any
  names: Tuple[Tuple[str, str], ...]  # (name in the objective, resolved layer name)
  shape: Tuple[int, ...]  # (B, H, W, C)
  param: str
  squash: Optional[str]
  transforms: Tuple
  preprocess: Any
  jitter: int
  blur: float
  decay_power: float

  def render(self, parameters, colour_sqrt):
    """(B, H, W, C) images from the batch's parameters: spatial basis, colour basis, squash."""
    if self.param == "fft":
      images = param_lib.fft_image(jnp.moveaxis(parameters, 1, 0), *self.shape[1:3], self.decay_power)
    else:
      images = parameters
    if colour_sqrt is not None:
      images = param_lib.decorrelate(images, colour_sqrt)
    return param_lib.squash(images, self.squash) if self.squash else images

  def to_input(self, images):
    return param_lib.to_model_input(images, self.preprocess) if self.preprocess else images

  def seen(self, images, keys):
    """What the model sees this step: the images rolled (keras-vis jitter) and transformed, at the model's size."""
    def one(image, key):
      roll_key, transform_key = jax.random.split(key)
      if self.jitter:
        image = jnp.roll(image, jax.random.randint(roll_key, (2,), -self.jitter, self.jitter + 1), axis=(0, 1))
      return transforms_lib.compose(self.transforms, transform_key, image)
    moved = jax.vmap(one)(images, keys)
    return moved if moved.shape == images.shape else jax.image.resize(moved, images.shape, "linear")


@functools.partial(jax.jit, static_argnames=("recipe",))
def _start(row_seeds, seed, *, recipe):
  """Each image's starting parameters, the Adam state, and each image's key for its steps."""
  row_keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.PRNGKey(seed), row))(row_seeds)
  init_keys, step_keys = jnp.moveaxis(jax.vmap(jax.random.split)(row_keys), 1, 0)
  parameters = jax.vmap(lambda key: _initial_parameters(key, recipe.shape[1:], recipe.param,
                                                        recipe.squash is not None))(init_keys)
  return parameters, optax.adam(1.0).init(parameters), step_keys  # Adam's state does not depend on lr


@functools.partial(jax.jit, static_argnames=("recipe",), donate_argnums=(0, 1))
def _step(parameters, state, index, step_keys, variables, objective, colour_sqrt, lr, l2, tv, *, recipe):
  """One Adam step of every image up its objective (one jitted step called `steps` times: XLA:CPU runs convolutions
  inside a while loop, which a `lax.scan` over steps compiles to, several times slower; see explain/sampling.py)."""
  model = features.unwrap_model(recipe.model)

  def loss(parameters, keys):
    images = recipe.render(parameters, colour_sqrt)
    inputs = recipe.to_input(recipe.seen(images, keys))
    if recipe.names:
      logits, captured = introspect.capture_outputs(model, variables, inputs, [real for _, real in recipe.names])
    else:
      logits, captured = features.apply_logits(model, variables, inputs), {}
    scores = objective(logits, {name: captured[real] for name, real in recipe.names})
    penalties = l2 * jnp.mean(images ** 2, axis=(1, 2, 3)) + tv * total_variation(images)
    return jnp.sum(penalties - scores)

  keys = jax.vmap(lambda key: jax.random.fold_in(key, index))(step_keys)
  updates, state = optax.adam(lr).update(jax.grad(loss)(parameters, keys), state, parameters)
  parameters = optax.apply_updates(parameters, updates)
  if recipe.blur:  # every 4th step, as Yosinski et al.: steady blurring would wash the image out
    blurred = dm_pix.gaussian_blur(parameters, recipe.blur, kernel_size=2 * int(np.ceil(2 * recipe.blur)) + 1)
    parameters = jnp.where(index % 4 == 3, blurred, parameters)
  return parameters, state


@functools.partial(jax.jit, static_argnames=("recipe",))
def _finish(parameters, colour_sqrt, *, recipe):
  """The images as drawn ([0, 1] pixels when squashed) and in the model's input space."""
  images = recipe.render(parameters, colour_sqrt)
  return images, recipe.to_input(images)


def _colour_sqrt(colour, channels: int) -> Optional[np.ndarray]:
  """The square root of the colour covariance to decorrelate with, or None; a one-line error for a bad `colour`."""
  if colour is None:
    return None
  if isinstance(colour, str):
    if colour != "imagenet":
      raise ValueError(f"unknown colour {colour!r}; give 'imagenet', a (C, C) colour covariance (see "
                       "cnnjax.explain.parameterization.colour_covariance) or None")
    sqrt = param_lib.IMAGENET_COLOUR_SQRT
  else:
    sqrt = param_lib.colour_sqrt(colour)
  if sqrt.shape != (channels, channels):
    raise ValueError(f"colour={'imagenet' if isinstance(colour, str) else 'covariance'} is {sqrt.shape[0]}x"
                     f"{sqrt.shape[1]} but the images have {channels} channels; give a {channels}x{channels} "
                     "covariance or colour=None")
  return sqrt


def _checked_options(input_shape, param, squash, preprocess, transforms, steps, lr, jitter, blur, return_pixels):
  """The options as the jitted call takes them, or a one-line error naming the bad one."""
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (H, W, C); got {input_shape}")
  if int(steps) < 1 or int(jitter) < 0 or blur < 0 or lr <= 0:
    raise ValueError(f"need steps >= 1, lr > 0, jitter >= 0, blur >= 0; got steps={steps}, lr={lr}, "
                     f"jitter={jitter}, blur={blur}")
  if param not in param_lib.SPATIAL:
    raise ValueError(f"unknown param {param!r}; use one of {', '.join(param_lib.SPATIAL)}")
  if squash is not None and squash not in param_lib.SQUASHES:
    raise ValueError(f"unknown squash {squash!r}; use one of {', '.join(param_lib.SQUASHES)} or None")
  if blur and param != "pixels":
    raise ValueError("blur smooths pixels every 4 steps; it needs param='pixels' (the 1/f Fourier image is smooth "
                     "already)")
  preprocess = param_lib.check_preprocess(preprocess)
  if return_pixels and squash is None:
    raise ValueError("return_pixels needs squash='sigmoid' or 'tanh' (with squash=None the image is the model "
                     "input, which is returned anyway)")
  if squash is not None and preprocess is None:
    raise ValueError(f"squash={squash!r} draws [0, 1] pixels: give preprocess= the model's input convention (a "
                     f"cnnjax.data preprocess mode: {', '.join(param_lib.PREPROCESS_MODES)}, or a function of "
                     "[0, 255] images), or use **KERAS_VIS to optimise in the input space directly")
  if isinstance(transforms, str):
    named = {"standard": transforms_lib.standard_transforms, "lucid": transforms_lib.lucid_transforms}
    if transforms not in named:
      raise ValueError(f"unknown transforms {transforms!r}; give 'standard', 'lucid' or a sequence of "
                       "cnnjax.explain.transforms (e.g. (Pad(2), Jitter(2)); () for none)")
    transforms = named[transforms](min(input_shape[:2]))
  return input_shape, preprocess, transforms_lib.check_transforms(transforms)


def _objective_of_units(model, input_shape, targets, layer, filters):
  """keras-vis style units (class `targets`, or a `layer`'s `filters`) as an objective of unit weights."""
  if layer is None:
    if filters is not None or targets is None:
      raise ValueError("give targets (class indices) for classes, or layer=NAME with filters=[...] for a "
                       "layer's channels, or objective= (cnnjax.explain.objectives)")
    units, what, count = targets, "targets", features.num_classes(model, input_shape)
  else:
    if targets is not None or filters is None:
      raise ValueError(f"with layer={layer!r} give filters=[channel indices] (and no targets)")
    units, what = filters, "filters"
    count = features.resolve_layer(model, input_shape, layer).shape[-1]
  if isinstance(units, (int, np.integer)):
    units = [units]
  return objectives_lib.mean_of_units(_unit_weights(units, count, what), layer)


def maximize_activation(model, variables, targets: Optional[Units] = None, *, input_shape: Sequence[int],
                        layer: Optional[str] = None, filters: Optional[Units] = None,
                        objective: Optional[objectives_lib.Objective] = None, batch: Optional[int] = None,
                        preprocess: Union[None, str, Callable] = None, param: str = "fft",
                        colour="imagenet", squash: Optional[str] = "sigmoid", transforms="standard",
                        decay_power: float = 1.5, steps: int = 256, lr: float = 0.05, l2: float = 0.0,
                        tv: float = 0.0, jitter: int = 0, blur: float = 0.0, seed: int = 0,
                        return_pixels: bool = False) -> jax.Array:
  """(N, H, W, C) inputs, one per visualization, that maximize the chosen units, in the model's input space.

  What to maximize: class `targets`, each a class index or a list of indices maximized jointly in one image
  (keras-vis `filter_indices`); or a layer's channels, `layer=NAME, filters=[...]` (the mean of a channel's output
  over space; entries may again be lists); or any `objective` of `cnnjax.explain.objectives` (classes, channels,
  neurons, directions, diversity and their sums), with `batch` images (default: one per index it holds, else 1).

  How the image is drawn (lucid's defaults; `**KERAS_VIS` for the older pixel recipe):
    param: 'fft' (Fourier coefficients scaled by 1/f**decay_power; lucid uses 1, 1.5 transferred better in
      bench/feature_vis_transfer.py) or 'pixels'.
    colour: 'imagenet' (lucid's decorrelated ImageNet colour), a (C, C) colour covariance (e.g.
      `parameterization.colour_covariance(dataset_images)`), or None (plain RGB).
    squash: 'sigmoid' or 'tanh' to [0, 1] pixels, then `preprocess` (a cnnjax.data preprocess mode such as 'torch'
      or 'tf', or a function of [0, 255] images) into the model's input space; None: the image is the model input.
    transforms: 'standard' (lucid's pad, jitter, scale, rotate, jitter at three times its ranges, relative to the image
      size: `transforms.standard_transforms`), 'lucid' (lucid's own amounts), a sequence of
      `cnnjax.explain.transforms`, or () for none; the transformed image is resized back to the input size.
    steps, lr: Adam steps and learning rate. l2, tv: penalties on mean(x^2) and total variation of the drawn image.
    jitter, blur: keras-vis's random roll by up to `jitter` pixels, and a Gaussian blur of sigma `blur` every 4
      steps (param='pixels' only).
    seed: each image's noise and transforms are keyed by the seed and its own objective, so an image comes out the
      same alone as in a batch (diversity, which couples the images, aside).
    return_pixels: return the drawn [0, 1] pixels (to show or save) instead of the model inputs (needs a squash).
  """
  input_shape, preprocess, transforms = _checked_options(input_shape, param, squash, preprocess, transforms, steps,
                                                         lr, jitter, blur, return_pixels)
  if objective is None:
    objective = _objective_of_units(model, input_shape, targets, layer, filters)
  elif targets is not None or layer is not None or filters is not None:
    raise ValueError("give either objective= or targets / layer and filters, not both")
  elif not isinstance(objective, objectives_lib.Objective):
    raise ValueError(f"objective must be a cnnjax.explain.objectives.Objective (e.g. objectives.channel(name, 3)); "
                     f"got {type(objective).__name__}")
  implied = objectives_lib.batch_size(objective)
  if batch is not None and implied is not None and int(batch) != implied:
    raise ValueError(f"batch={batch} but the objective holds indices for {implied} images")
  batch = int(batch or implied or 1)
  if batch < 1:
    raise ValueError(f"batch must be >= 1; got {batch}")
  infos = {name: features.resolve_layer(model, input_shape, name) for name in objective.layers}
  objective = objectives_lib.resolve(objective, features.num_classes(model, input_shape),
                                     {name: info.shape for name, info in infos.items()})
  colour_sqrt = _colour_sqrt(colour, input_shape[-1])
  colour_sqrt = None if colour_sqrt is None else jnp.asarray(colour_sqrt)
  recipe = _Recipe(features.static_model(model), tuple((name, info.name) for name, info in infos.items()),
                   (batch, *input_shape), param, squash, transforms, preprocess, int(jitter), float(blur),
                   float(decay_power))
  parameters, state, step_keys = _start(jnp.asarray(_row_seeds(objective, batch)), jnp.uint32(seed), recipe=recipe)
  lr, l2, tv = jnp.float32(lr), jnp.float32(l2), jnp.float32(tv)
  for index in range(int(steps)):
    parameters, state = _step(parameters, state, jnp.int32(index), step_keys, variables, objective, colour_sqrt, lr,
                              l2, tv, recipe=recipe)
  pixels, inputs = _finish(parameters, colour_sqrt, recipe=recipe)
  return pixels if return_pixels else inputs
