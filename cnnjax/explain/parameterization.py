"""Image parameterizations for feature visualization (Olah et al. 2017, "Feature Visualization"; Mordvintsev et al.
2018, "Differentiable Image Parameterizations"), after lucid's `optvis/param` (spatial.py, color.py).

An image is drawn from unconstrained parameters in three stages: a spatial basis (`pixels`, or a Fourier spectrum
scaled by 1/frequency, `fft_image`), a colour basis (`decorrelate`: decorrelated colour -> RGB through the square
root of a colour covariance), and a squash to valid [0, 1] pixels (`squash`: sigmoid or tanh). `to_model_input`
then maps [0, 1] pixels into the model's input space (a `cnnjax.data` preprocess mode, or any function).
"""
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

SPATIAL = ("fft", "pixels")
SQUASHES = ("sigmoid", "tanh")
# lucid color.py `color_correlation_svd_sqrt`: U sqrt(S) of the ImageNet RGB covariance (pixels in [0, 1]).
IMAGENET_COLOUR_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                   [0.27, 0.00, -0.05],
                                   [0.27, -0.09, 0.03]], np.float32)
# lucid spatial.py `fft_image` divides the image by 4 (its "magic constant"): with it, Adam at lr 0.05 starts from
# a near-grey image and moves at the pace lucid's defaults were tuned for.
_FFT_DAMPING = 4.0
# The affine maps of cnnjax.data.preprocess's modes, images in [0, 255] -> model input as `x * scale + offset` per
# channel (caffe also flips RGB to BGR). cnnjax.explain may not import cnnjax.data (.importlinter), so the numbers are
# repeated here; tests/test_feature_vis.py checks every mode against cnnjax.data.preprocess.
_TORCH_MEAN, _TORCH_STD = np.asarray((0.485, 0.456, 0.406)), np.asarray((0.229, 0.224, 0.225))
_PREPROCESS_AFFINE = {
    "rescale": (1 / 255.0, 0.0, False),
    "tf": (1 / 127.5, -1.0, False),
    "torch": (1 / (255.0 * _TORCH_STD), -_TORCH_MEAN / _TORCH_STD, False),
    "caffe": (1.0, -np.asarray((103.939, 116.779, 123.68)), True),
}
PREPROCESS_MODES = tuple(_PREPROCESS_AFFINE)


def frequencies(height: int, width: int) -> np.ndarray:
  """(height, width // 2 + 1) spatial frequencies (cycles per pixel) of `jnp.fft.rfft2`'s bins (lucid
  `rfft2d_freqs`, without its extra bin for odd widths: `irfft2` is told the width)."""
  return np.sqrt(np.fft.fftfreq(height)[:, None] ** 2 + np.fft.rfftfreq(width)[None, :] ** 2)


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> np.ndarray:
  """(height, width // 2 + 1) factors 1 / f**decay_power that give white spectra a natural image's 1/f falloff.

  Args:
    height, width: the image size.
    decay_power: the exponent (lucid's default 1); the DC bin is treated as frequency 1 / max(height, width).
  Returns:
    float32 factors for `fft_image` (with an orthonormal FFT, so the learning rate matches pixel optimisation).
  """
  return (1.0 / np.maximum(frequencies(height, width), 1.0 / max(height, width)) ** decay_power).astype(np.float32)


def spectrum_shape(shape) -> tuple:
  """(2, B, C, H, W // 2 + 1): the real and imaginary parts `fft_image` takes for images of (B, H, W, C) `shape`."""
  batch, height, width, channels = shape
  return (2, batch, channels, height, width // 2 + 1)


def fft_image(spectrum, height: int, width: int, decay_power: float = 1.0) -> jax.Array:
  """(B, H, W, C) images from Fourier coefficients scaled by 1/f (lucid spatial.py `fft_image`).

  Args:
    spectrum: (2, B, C, H, W // 2 + 1) real and imaginary parts (`spectrum_shape`).
    height, width: the image size (odd widths are fine: `irfft2` is given the size).
    decay_power: see `spectrum_scale`.
  Returns:
    float32 images, spatially decorrelated: a white spectrum gives an image with a natural 1/f power falloff.
  """
  scaled = spectrum_scale(height, width, decay_power) * jax.lax.complex(spectrum[0], spectrum[1])
  images = jnp.fft.irfft2(scaled, s=(height, width), norm="ortho") / _FFT_DAMPING
  return jnp.transpose(images, (0, 2, 3, 1)).astype(jnp.float32)


def fft_spectrum(images, decay_power: float = 1.0) -> jax.Array:
  """The inverse of `fft_image`: the (2, B, C, H, W // 2 + 1) spectrum whose image is `images` (B, H, W, C)."""
  height, width = images.shape[1:3]
  coefficients = jnp.fft.rfft2(jnp.transpose(images, (0, 3, 1, 2)) * _FFT_DAMPING, norm="ortho")
  coefficients = coefficients / spectrum_scale(height, width, decay_power)
  return jnp.stack([coefficients.real, coefficients.imag]).astype(jnp.float32)


def colour_sqrt(covariance) -> np.ndarray:
  """(C, C) S with S S^T = covariance: U sqrt(s) of its SVD, as lucid's `color_correlation_svd_sqrt` was made.

  Args:
    covariance: (C, C) symmetric positive semi-definite colour covariance, e.g. `colour_covariance(images)`.
  Returns:
    float32 S; decorrelated colours z map to RGB as S z, so white z has exactly `covariance`.
  """
  covariance = np.asarray(covariance, np.float64)
  if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
    raise ValueError(f"a colour covariance must be a square (C, C) matrix; got shape {covariance.shape}")
  if not np.allclose(covariance, covariance.T, atol=1e-8) or np.linalg.eigvalsh(covariance).min() < -1e-8:
    raise ValueError("a colour covariance must be symmetric positive semi-definite (e.g. from colour_covariance)")
  u, s, _ = np.linalg.svd(covariance)
  return (u * np.sqrt(s)).astype(np.float32)


def colour_covariance(images) -> np.ndarray:
  """(C, C) covariance of the pixel colours of `images` (N, H, W, C), uint8 or float in [0, 255], in [0, 1] units
  (lucid's ImageNet matrix is in these units): the dataset-specific alternative to `IMAGENET_COLOUR_SQRT`."""
  pixels = np.asarray(images, np.float64).reshape(-1, np.shape(images)[-1]) / 255.0
  if len(pixels) < 2:
    raise ValueError("colour_covariance needs at least two pixels; give a (N, H, W, C) batch of images")
  return np.cov(pixels, rowvar=False).reshape(pixels.shape[1], pixels.shape[1]).astype(np.float32)


def decorrelate(images, sqrt) -> jax.Array:
  """Decorrelated colours -> RGB: images (..., C) times S^T, S scaled to a largest column norm of 1 (lucid
  `_linear_decorelate_color`), so the colour basis changes the direction of a step, not its length."""
  sqrt = jnp.asarray(sqrt, jnp.float32)
  normalised = sqrt / jnp.max(jnp.linalg.norm(sqrt, axis=0))
  return images @ normalised.T


def squash(images, how: str) -> jax.Array:
  """Unconstrained values -> [0, 1] pixels: 'sigmoid' (lucid `to_valid_rgb`) or 'tanh' ((tanh(x) + 1) / 2)."""
  if how == "sigmoid":
    return jax.nn.sigmoid(images)
  return (jnp.tanh(images) + 1.0) / 2.0


def check_preprocess(preprocess: Union[None, str, Callable]) -> Optional[Union[str, Callable]]:
  """`preprocess` if it is None, a known mode or a function; else a one-line error."""
  if preprocess is None or callable(preprocess) or preprocess in _PREPROCESS_AFFINE:
    return preprocess
  raise ValueError(f"unknown preprocess {preprocess!r}; give a cnnjax.data preprocess mode "
                   f"({', '.join(PREPROCESS_MODES)}) or a function of [0, 255] images, e.g. "
                   "functools.partial(cnnjax.data.preprocess, mode='mean_std', mean=..., std=...)")


def to_model_input(pixels, preprocess: Union[str, Callable]) -> jax.Array:
  """[0, 1] pixels (B, H, W, C) -> the model's input space.

  Args:
    pixels: images in [0, 1].
    preprocess: a `cnnjax.data.preprocess` mode (same numbers: 'rescale', 'tf', 'torch', 'caffe'), or a function
      of images in [0, 255] (cnnjax.data's convention), e.g. one that binds mode='mean_std' with its statistics.
  Returns:
    float32 model inputs.
  """
  images = pixels * 255.0
  if callable(preprocess):
    return jnp.asarray(preprocess(images), jnp.float32)
  scale, offset, bgr = _PREPROCESS_AFFINE[preprocess]
  if (bgr or np.ndim(scale)) and images.shape[-1] != 3:
    raise ValueError(f"preprocess mode {preprocess!r} needs RGB images (3 channels); got {images.shape[-1]}")
  images = images[..., ::-1] if bgr else images
  return (images * jnp.asarray(scale, jnp.float32) + jnp.asarray(offset, jnp.float32)).astype(jnp.float32)


def from_model_input(inputs, preprocess: str) -> jax.Array:
  """The inverse of `to_model_input` for a preprocess mode: model inputs -> [0, 1] pixels (to show or save the
  images `maximize_activation` returns)."""
  if preprocess not in _PREPROCESS_AFFINE:
    raise ValueError(f"from_model_input inverts the modes {', '.join(PREPROCESS_MODES)}; got {preprocess!r} (invert "
                     "a custom preprocess function yourself)")
  scale, offset, bgr = _PREPROCESS_AFFINE[preprocess]
  images = (jnp.asarray(inputs, jnp.float32) - jnp.asarray(offset, jnp.float32)) / jnp.asarray(scale, jnp.float32)
  return (images[..., ::-1] if bgr else images) / 255.0
