"""Keras ImageDataGenerator-style random augmentation, inside jit, one key per image.

Semantics follow `keras.preprocessing.image.ImageDataGenerator.random_transform` (Keras 2 and the legacy
module of Keras 3):
  rotation      degrees; angle uniform in [-rotation, rotation].
  width_shift   fraction of the width; shift uniform in [-w * W, w * W] pixels (likewise height_shift).
  shear         degrees (Keras 2's `shear_range` is an angle in degrees: 0.2 is a 0.2-degree shear, not 20 %;
                keras-preprocessing converts it with np.deg2rad); angle uniform in [-shear, shear].
  zoom          float z -> scale factors uniform in [1 - z, 1 + z], drawn independently for x and y
                (or a (low, high) pair); > 1 samples a larger area, i.e. zooms out.
  horizontal_flip  mirror left-right with probability 1/2.
The transforms compose, in Keras's order (rotation, shift, shear, zoom about the image centre), into one
affine map per image, resampled once: bilinear, fill_mode 'nearest'. One deliberate difference: Keras's
channels-last path swaps its own axes, so its `width_shift_range` actually bounds the vertical shift and
`height_shift_range` the horizontal one (identical for square images); here each moves the axis it names.
The flip is applied after the warp, as Keras does.

Settings are Python values (static under jit); all-zero settings return the input unchanged.
"""
from typing import Sequence, Tuple, Union

import dm_pix
import jax
import jax.numpy as jnp


def _zoom_bounds(zoom: Union[float, Sequence[float]]) -> Tuple[float, float]:
  if isinstance(zoom, (int, float)):
    if not 0 <= zoom < 1:
      raise ValueError(f"zoom must be in [0, 1) (scale drawn from [1 - zoom, 1 + zoom]), got {zoom}")
    return 1.0 - zoom, 1.0 + zoom
  low, high = (float(z) for z in zoom)
  if not 0 < low <= high:
    raise ValueError(f"zoom as (low, high) needs 0 < low <= high, got {tuple(zoom)}")
  return low, high


def _check(name: str, value: float, upper: float) -> None:
  if not 0 <= value < upper:
    raise ValueError(f"{name} must be in [0, {upper}), got {value}")


def random_matrices(key, shape, *, rotation=0., width_shift=0., height_shift=0., shear=0., zoom=0.):
  """(B, 3, 3) maps from output (row, col, 1) to input pixel coordinates, one random draw per image.

  `shape` is the (B, H, W, C) batch shape. Row b depends only on the b-th key of `jax.random.split(key, B)`.
  """
  batch, height, width = shape[0], shape[1], shape[2]
  zoom_low, zoom_high = _zoom_bounds(zoom)

  def one(key):
    keys = jax.random.split(key, 5)
    uniform = lambda k, bound, n=(): jax.random.uniform(k, n, minval=-bound, maxval=bound)
    theta = jnp.deg2rad(uniform(keys[0], rotation))
    shift_x = uniform(keys[1], width_shift) * width
    shift_y = uniform(keys[2], height_shift) * height
    shear_angle = jnp.deg2rad(uniform(keys[3], shear))
    zoom_x, zoom_y = jax.random.uniform(keys[4], (2,), minval=zoom_low, maxval=zoom_high)
    # Keras's matrices, in (x = col, y = row) coordinates about the image centre.
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rotate = jnp.array([[cos, -sin, 0.], [sin, cos, 0.], [0., 0., 1.]])
    shift = jnp.array([[1., 0., shift_x], [0., 1., shift_y], [0., 0., 1.]])
    skew = jnp.array([[1., -jnp.sin(shear_angle), 0.], [0., jnp.cos(shear_angle), 0.], [0., 0., 1.]])
    scale = jnp.diag(jnp.array([zoom_x, zoom_y, 1.]))
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    to_centre = jnp.array([[1., 0., -centre_x], [0., 1., -centre_y], [0., 0., 1.]])
    from_centre = jnp.array([[1., 0., centre_x], [0., 1., centre_y], [0., 0., 1.]])
    xy = from_centre @ rotate @ shift @ skew @ scale @ to_centre
    swap = jnp.array([[0., 1., 0.], [1., 0., 0.], [0., 0., 1.]])  # (x, y) <-> (row, col)
    return swap @ xy @ swap

  return jax.vmap(one)(jax.random.split(key, batch))


def warp(images, matrices):
  """Resamples each image at matrices[b] @ (row, col, 1): bilinear, edges extended ('nearest')."""
  def one(image, matrix):
    # dm-pix warps all three axes (row, col, channel); the channel axis maps to itself.
    full = jnp.zeros((3, 4), matrix.dtype)
    full = full.at[:2, :2].set(matrix[:2, :2]).at[:2, 3].set(matrix[:2, 2]).at[2, 2].set(1.)
    return dm_pix.affine_transform(image, full, order=1, mode="nearest")

  return jax.vmap(one)(images, matrices)


def augment(images, key, *, horizontal_flip: bool = False, rotation: float = 0., width_shift: float = 0.,
            height_shift: float = 0., shear: float = 0., zoom: Union[float, Sequence[float]] = 0.):
  """Randomly transformed float images (B, H, W, C), same shape and dtype; see the module docstring."""
  _check("rotation", rotation, 360)
  _check("width_shift", width_shift, 1)
  _check("height_shift", height_shift, 1)
  _check("shear", shear, 90)
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"augment expects a batch (B, H, W, C), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"augment expects float images (convert uint8 with .astype(jnp.float32)), got {images.dtype}")
  warp_key, flip_key = augment_keys(key)
  if rotation or width_shift or height_shift or shear or _zoom_bounds(zoom) != (1., 1.):
    matrices = random_matrices(warp_key, images.shape, rotation=rotation, width_shift=width_shift,
                               height_shift=height_shift, shear=shear, zoom=zoom)
    images = warp(images, matrices).astype(images.dtype)
  if horizontal_flip:
    flip = random_flips(flip_key, images.shape[0])
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  return images


def random_flips(key, batch: int):
  """(B,) bool, True where `augment` mirrors the image: each image's own coin from `key`'s b-th split."""
  return jax.vmap(lambda k: jax.random.bernoulli(k))(jax.random.split(key, batch))


def augment_keys(key):
  """The (warp key, flip key) pair `augment` derives from `key`: reproduces its draws in tests and plots."""
  warp_key, flip_key = jax.random.split(key)
  return warp_key, flip_key
