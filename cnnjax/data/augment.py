"""Keras ImageDataGenerator-style random augmentation, inside jit, one key per image.

Semantics follow `keras.preprocessing.image.ImageDataGenerator.random_transform` (Keras 2 and the legacy
module of Keras 3):
  rotation      degrees; angle uniform in [-rotation, rotation].
  width_shift   fraction of the width; shift uniform in [-w * W, w * W] pixels (likewise height_shift).
  shear         degrees; angle uniform in [-shear, shear]. Keras's `shear_range` has been degrees since early
                2018 (keras-team/keras#8868, converted with np.deg2rad); before, it was radians, so the 2016
                Keras blog's `shear_range=0.2` meant 0.2 rad = 11.5 degrees, while 0.2 here is 0.2 degrees.
  zoom          float z -> scale factors uniform in [1 - z, 1 + z], drawn independently for x and y
                (or a (low, high) pair); > 1 samples a larger area, i.e. zooms out.
  horizontal_flip  mirror left-right with probability 1/2.
The transforms compose, in Keras's order (rotation, shift, shear, zoom about the image centre), into one
affine map per image, resampled once: bilinear, fill_mode 'nearest'. One deliberate difference: the
channels-last path of Keras 3's legacy ImageDataGenerator (copied from keras-preprocessing) swaps its own
axes, so its `height_shift_range` bounds the horizontal shift and `width_shift_range` the vertical one
(the same for square images); here each moves the axis it names. tests/test_data.py checks the warp
against Keras's apply_affine_transform given the same draws.
The flip is applied after the warp, as Keras does.

Settings are Python numbers (or a dict / ConfigDict of them: `augment(x, key, **dict(config.augment))`); their
values are traced, so changing one does not recompile. All-zero settings return the input unchanged.
"""
import functools
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp

PARAMETER_NAMES = ("theta", "shift_x", "shift_y", "shear", "zoom_x", "zoom_y")


def _zoom_bounds(zoom: Union[float, Sequence[float]]) -> Tuple[float, float]:
  if isinstance(zoom, (int, float)):
    if not 0 <= zoom < 1:
      raise ValueError(f"zoom must be in [0, 1) (scale drawn from [1 - zoom, 1 + zoom]), got {zoom}")
    return 1.0 - zoom, 1.0 + zoom
  low, high = (float(z) for z in zoom)
  if not 0 < low <= high:
    raise ValueError(f"zoom as (low, high) needs 0 < low <= high, got {tuple(zoom)}")
  return low, high


def _ranges(rotation, width_shift, height_shift, shear, zoom) -> Tuple[float, ...]:
  """The settings, checked, as (rotation, width_shift, height_shift, shear, zoom_low, zoom_high)."""
  for name, value, upper in (("rotation", rotation, 360), ("width_shift", width_shift, 1),
                             ("height_shift", height_shift, 1), ("shear", shear, 90)):
    if not 0 <= value < upper:
      raise ValueError(f"{name} must be in [0, {upper}), got {value}")
  return (float(rotation), float(width_shift), float(height_shift), float(shear), *_zoom_bounds(zoom))


@functools.partial(jax.jit, static_argnums=1)
def _draw(key, batch: int, ranges):
  """Per-image parameters from traced `ranges`; image b's depend only on the b-th key of split(key, batch)."""
  rotation, width_shift, height_shift, shear, zoom_low, zoom_high = (ranges[i] for i in range(6))

  def one(key):
    # One draw of six uniforms per image (a single threefry call compiles much faster than six).
    u = jax.random.uniform(key, (6,))
    symmetric = lambda u, bound: (2 * u - 1) * bound
    zoom = zoom_low + u[4:] * (zoom_high - zoom_low)
    return dict(theta=symmetric(u[0], rotation), shift_x=symmetric(u[1], width_shift),
                shift_y=symmetric(u[2], height_shift), shear=symmetric(u[3], shear), zoom_x=zoom[0], zoom_y=zoom[1])

  return jax.vmap(one)(jax.random.split(key, batch))


def random_parameters(key, batch: int, *, rotation=0., width_shift=0., height_shift=0., shear=0., zoom=0.):
  """The draws `augment` makes from its warp key (see `augment_keys`): dict of (B,) float32 arrays.

  theta and shear in degrees, shift_x / shift_y as fractions of the width / height, zoom_x / zoom_y scale
  factors, as Keras's `random_transform` draws them.
  """
  ranges = jnp.asarray(_ranges(rotation, width_shift, height_shift, shear, zoom), jnp.float32)
  return _draw(key, batch, ranges)


def affine_matrices(parameters, height: int, width: int):
  """(B, 3, 3) maps from output (row, col, 1) to input coordinates, composed as Keras's apply_affine_transform."""
  def one(theta, shift_x, shift_y, shear, zoom_x, zoom_y):
    theta, shear = jnp.deg2rad(theta), jnp.deg2rad(shear)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # Keras's matrices, in (x = col, y = row) coordinates about the image centre.
    rotate = jnp.array([[cos, -sin, 0.], [sin, cos, 0.], [0., 0., 1.]])
    shift = jnp.array([[1., 0., shift_x * width], [0., 1., shift_y * height], [0., 0., 1.]])
    skew = jnp.array([[1., -jnp.sin(shear), 0.], [0., jnp.cos(shear), 0.], [0., 0., 1.]])
    scale = jnp.diag(jnp.array([zoom_x, zoom_y, 1.]))
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    to_centre = jnp.array([[1., 0., -centre_x], [0., 1., -centre_y], [0., 0., 1.]])
    from_centre = jnp.array([[1., 0., centre_x], [0., 1., centre_y], [0., 0., 1.]])
    xy = from_centre @ rotate @ shift @ skew @ scale @ to_centre
    swap = jnp.array([[0., 1., 0.], [1., 0., 0.], [0., 0., 1.]])  # (x, y) <-> (row, col)
    return swap @ xy @ swap

  return jax.vmap(one)(*(parameters[name] for name in PARAMETER_NAMES))


def warp(images, matrices):
  """Each image resampled at matrices[b] @ (row, col, 1): bilinear, edges extended (Keras fill_mode 'nearest').

  A 2-D gather of whole pixels (all channels at once). dm-pix's affine_transform interpolates over the
  channel axis too, and its 3-D program took seconds longer to compile for the same result.
  """
  height, width = images.shape[1], images.shape[2]
  grid = jnp.stack(jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij"), -1).reshape(-1, 2)
  homogeneous = jnp.concatenate([grid, jnp.ones((grid.shape[0], 1), grid.dtype)], axis=1).astype(matrices.dtype)

  def one(image, matrix):
    coordinates = homogeneous @ matrix[:2].T  # (H * W, 2) input (row, col) of every output pixel
    # Clamping the coordinate before interpolating equals replicating the edge pixels outwards.
    rows = jnp.clip(coordinates[:, 0], 0, height - 1)
    cols = jnp.clip(coordinates[:, 1], 0, width - 1)
    row0 = jnp.floor(rows).astype(jnp.int32)
    col0 = jnp.floor(cols).astype(jnp.int32)
    row1 = jnp.minimum(row0 + 1, height - 1)
    col1 = jnp.minimum(col0 + 1, width - 1)
    down = (rows - row0)[:, None].astype(image.dtype)
    right = (cols - col0)[:, None].astype(image.dtype)
    top = image[row0, col0] * (1 - right) + image[row0, col1] * right
    bottom = image[row1, col0] * (1 - right) + image[row1, col1] * right
    return (top * (1 - down) + bottom * down).reshape(image.shape)

  return jax.vmap(one)(images, matrices)


def augment(images, key, *, horizontal_flip: bool = False, rotation: float = 0., width_shift: float = 0.,
            height_shift: float = 0., shear: float = 0., zoom: Union[float, Sequence[float]] = 0.):
  """Randomly transformed float images (B, H, W, C), same shape and dtype; see the module docstring."""
  ranges = _ranges(rotation, width_shift, height_shift, shear, zoom)
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"augment expects a batch (B, H, W, C), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"augment expects float images (convert uint8 with .astype(jnp.float32)), got {images.dtype}")
  transform = ranges != (0., 0., 0., 0., 1., 1.)
  if not (horizontal_flip or transform):
    return images
  return _augment(images, key, jnp.asarray(ranges, jnp.float32), transform=transform, flip=bool(horizontal_flip))


# Compiled once per shape and on/off pattern: called eagerly (plots, notebooks) it would dispatch op by op.
@functools.partial(jax.jit, static_argnames=("transform", "flip"))
def _augment(images, key, ranges, *, transform: bool, flip: bool):
  warp_key, flip_key = augment_keys(key)
  if transform:
    matrices = affine_matrices(_draw(warp_key, images.shape[0], ranges), images.shape[1], images.shape[2])
    images = warp(images, matrices).astype(images.dtype)
  if flip:
    flips = random_flips(flip_key, images.shape[0])
    images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
  return images


def random_flips(key, batch: int):
  """(B,) bool, True where `augment` mirrors the image: each image's own coin from `key`'s b-th split."""
  return jax.vmap(lambda k: jax.random.bernoulli(k))(jax.random.split(key, batch))


def augment_keys(key):
  """The (warp key, flip key) pair `augment` derives from `key`: reproduces its draws in tests and plots."""
  warp_key, flip_key = jax.random.split(key)
  return warp_key, flip_key
