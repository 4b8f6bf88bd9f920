"""The convolution demo: Sobel kernels through lax.conv_general_dilated, next to a model's first layer."""
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import signal

from cnnjax import models, viz


def test_sobel_is_the_2d_correlation_with_the_sobel_kernels():
  gray = np.random.default_rng(0).random((7, 9)).astype(np.float32)
  dx, dy, magnitude = viz.sobel(gray)
  sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
  # 'symm' mirrors including the edge pixel, which for a 1-pixel border is repeating the edge.
  expected_dx = signal.correlate2d(gray, sobel_x, mode="same", boundary="symm")
  expected_dy = signal.correlate2d(gray, sobel_x.T, mode="same", boundary="symm")
  np.testing.assert_allclose(dx, expected_dx, atol=1e-5)
  np.testing.assert_allclose(dy, expected_dy, atol=1e-5)
  np.testing.assert_allclose(magnitude, np.hypot(expected_dx, expected_dy), atol=1e-5)


def test_a_vertical_edge_is_seen_by_dx_only():
  gray = np.zeros((6, 8), np.float32)
  gray[:, 4:] = 1.0  # dark left half, bright right half
  dx, dy, magnitude = viz.sobel(gray)
  np.testing.assert_array_equal(dy, 0.0)
  # Columns 3 and 4 straddle the edge: each sees a rise of 1 weighted 1 + 2 + 1; the rest see nothing.
  np.testing.assert_allclose(dx[:, 3:5], 4.0)
  np.testing.assert_array_equal(np.delete(dx, [3, 4], axis=1), 0.0)
  np.testing.assert_allclose(magnitude, np.abs(dx))


def _photo(tmp_path) -> Path:
  pixels = np.random.default_rng(1).integers(0, 255, size=(40, 30, 3)).astype(np.uint8)
  path = tmp_path / "photo.png"
  Image.fromarray(pixels).save(path)
  return path


def test_demo_figure_with_and_without_a_model(tmp_path):
  photo = _photo(tmp_path)
  viz.convolution_demo(photo, path=tmp_path / "sobel.png")
  assert (tmp_path / "sobel.png").stat().st_size > 1000

  model = models.create("simple_cnn", num_classes=3)
  variables = jax.jit(lambda key: model.init(key, np.zeros((1, 16, 16, 3), np.float32)))(jax.random.PRNGKey(0))
  figure = viz.convolution_demo(photo, model=model, variables=variables, image_size=16,
                                path=tmp_path / "demo.png")
  assert (tmp_path / "demo.png").stat().st_size > (tmp_path / "sobel.png").stat().st_size
  titles = " ".join(sub.get_suptitle() for sub in figure.subfigs[1].subfigs)
  assert "conv2d" in titles  # the first convolution of simple_cnn, found from the parameters

  with pytest.raises(ValueError, match="image_size is required"):
    viz.convolution_demo(photo, model=model, variables=variables)
  with pytest.raises(ValueError, match="both model and variables"):
    viz.convolution_demo(photo, model=model)
  with pytest.raises(ValueError, match="cannot read the photo"):
    viz.convolution_demo(tmp_path / "missing.jpg")

