"""Transformation robustness for feature visualization (Olah et al. 2017; lucid `optvis/transform.py`): random
padding, jitter, scaling and rotation applied to the image before every step, so the optimum is a pattern that
excites the unit wherever and however large it appears, not one adversarial arrangement of pixels.

A transform is a frozen dataclass called as `transform(key, image) -> image` on one (H, W, C) image (vmapped over the
batch with one key per image); being hashable, a tuple of them is a static jit argument. Each is the identity at
zero strength (`Pad(0)`, `Jitter(0)`, `RandomScale((1.0,))`, `RandomRotate((0.0,))`). `standard_transforms` is
maximize_activation's default; `lucid_transforms` is lucid's own set.
"""
import dataclasses
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _choice(key, values: Tuple[float, ...]) -> jax.Array:
  """One of `values`, uniformly (lucid `_rand_select`)."""
  return jnp.asarray(values, jnp.float32)[jax.random.randint(key, (), 0, len(values))]


def _resample(image, scale, angle) -> jax.Array:
  """`image` zoomed by `scale` and rotated by `angle` (radians) about its centre, same size, bilinear; pixels from
  outside take the nearest edge value, so no dark corners appear that the objective could exploit."""
  height, width = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                            indexing="ij")
  centre_row, centre_col = (height - 1) / 2.0, (width - 1) / 2.0
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale  # output -> input: the inverse rotation and zoom
  source_rows = centre_row + cos * (rows - centre_row) - sin * (cols - centre_col)
  source_cols = centre_col + sin * (rows - centre_row) + cos * (cols - centre_col)
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [source_rows, source_cols], order=1,
                                                             mode="nearest")
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


@dataclasses.dataclass(frozen=True)
class Pad:
  """Pads `width` pixels of `value` (grey for [0, 1] pixels) on every side (lucid `pad`), so later jitter and
  rotation move the image against a plain border instead of wrapping it around."""
  width: int
  value: float = 0.5

  def __call__(self, key, image):
    del key  # deterministic
    return jnp.pad(image, ((self.width, self.width), (self.width, self.width), (0, 0)), constant_values=self.value)


@dataclasses.dataclass(frozen=True)
class Jitter:
  """A random crop `pixels` smaller in height and width (lucid `jitter`): a random translation by 0..pixels."""
  pixels: int

  def __call__(self, key, image):
    if not self.pixels:
      return image
    height, width, channels = image.shape
    top, left = jax.random.randint(key, (2,), 0, self.pixels + 1)
    return jax.lax.dynamic_slice(image, (top, left, 0), (height - self.pixels, width - self.pixels, channels))


@dataclasses.dataclass(frozen=True)
class RandomScale:
  """Zooms by one of `scales` about the centre, keeping the size (lucid `random_scale` resizes instead; a fixed
  size keeps the shapes static under jit and fits models that need one input size)."""
  scales: Tuple[float, ...]

  def __call__(self, key, image):
    return _resample(image, _choice(key, self.scales), jnp.float32(0.0))


@dataclasses.dataclass(frozen=True)
class RandomRotate:
  """Rotates by one of `degrees` about the centre, keeping the size (lucid `random_rotate`)."""
  degrees: Tuple[float, ...]

  def __call__(self, key, image):
    return _resample(image, jnp.float32(1.0), jnp.deg2rad(_choice(key, self.degrees)))


def compose(transforms: Sequence, key, image) -> jax.Array:
  """`image` through every transform in order, each with its own key (lucid `compose`)."""
  for transform, transform_key in zip(transforms, jax.random.split(key, max(len(transforms), 1))):
    image = transform(transform_key, image)
  return image


def lucid_transforms(size: int) -> Tuple:
  """lucid's `standard_transforms` with its pixel amounts scaled from 224 pixels to `size`: pad 12, jitter 8,
  scale 0.9..1.1, rotate -10..10 degrees (a third of the draws unrotated), jitter 4.

  Args:
    size: the image's height (or width).
  Returns:
    a tuple of transforms for `maximize_activation(transforms=...)`.
  """
  pixels = lambda at_224: max(1, int(round(at_224 * size / 224)))
  return (Pad(pixels(12)), Jitter(pixels(8)), RandomScale(tuple(1 + (i - 5) / 50 for i in range(11))),
          RandomRotate(tuple(float(d) for d in range(-10, 11)) + 5 * (0.0,)), Jitter(pixels(4)))


def standard_transforms(size: int) -> Tuple:
  """maximize_activation's default: lucid's sequence at three times its ranges, relative to the image (pad and
  jitter 3/16 of its size, scale 0.7..1.3, rotate -30..30 degrees, jitter 3/32). Chosen on CIFAR-10
  (bench/feature_vis_transfer.py --tune, bench/RESULTS.md): at 32 pixels lucid's amounts shrink to 1-2 pixels, and
  resnet20's class images made with them transfer less to other networks (71% vs 81%).

  Args:
    size: the image's height (or width).
  Returns:
    a tuple of transforms for `maximize_activation(transforms=...)`.
  """
  return (Pad(max(1, size * 3 // 16)), Jitter(max(1, size * 3 // 16)),
          RandomScale(tuple(0.7 + 0.06 * i for i in range(11))),
          RandomRotate(tuple(float(d) for d in range(-30, 31, 3))), Jitter(max(1, size * 3 // 32)))


def check_transforms(transforms) -> Tuple:
  """`transforms` as a tuple of transforms, or a one-line error."""
  transforms = tuple(transforms)
  for transform in transforms:
    if not callable(transform) or not isinstance(transform, (Pad, Jitter, RandomScale, RandomRotate)) and (
        not dataclasses.is_dataclass(transform)):
      raise ValueError(f"transforms must be Pad, Jitter, RandomScale, RandomRotate (cnnjax.explain.transforms) or "
                       f"frozen dataclasses called as (key, image) -> image; got {transform!r}")
    if not isinstance(transform, (Pad, Jitter, RandomScale, RandomRotate)):
      continue
    for name, value in dataclasses.asdict(transform).items():
      values = np.atleast_1d(value)
      if values.size == 0 or (name in ("width", "pixels", "scales") and np.any(values < 0)) or (
          name == "scales" and np.any(values == 0)):
        raise ValueError(f"{type(transform).__name__}({name}={value!r}) is invalid: widths and pixels must be >= 0, "
                         "scales > 0, and choices non-empty")
  return transforms
