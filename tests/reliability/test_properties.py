"""Property-based tests (hypothesis): augmentation, preprocessing and the explainers' outputs keep their
contracts for any images, settings, targets and weights, extreme values included.

tests/test_data.py already checks with hypothesis that augmentation stays within each image's range; the rest is
here. Shapes are few and fixed, so that hypothesis' examples reuse a handful of compilations.
"""
import importlib

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import data, explain
from cnnjax.models import layers as L

augment_lib = importlib.import_module("cnnjax.data.augment")  # the package exports a function of that name
preprocess_lib = importlib.import_module("cnnjax.data.preprocess")

SETTINGS = hypothesis.settings(max_examples=10, deadline=None, derandomize=True,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])
SHAPES = [(2, 8, 8, 3), (3, 5, 7, 1)]
SCALES = [1e-3, 1.0, 255.0, 1e4]  # pixel magnitudes: tiny, [0, 1], [0, 255], far outside


def random_images(seed, shape, scale=255.0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, scale, shape), dtype)


augment_settings = st.fixed_dictionaries({
    "rotation": st.floats(0, 359), "width_shift": st.floats(0, 0.99), "height_shift": st.floats(0, 0.99),
    "shear": st.floats(0, 89), "zoom": st.floats(0, 0.99), "horizontal_flip": st.booleans()})


# --- augmentation --------------------------------------------------------------------------------------------

@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), shape=st.sampled_from(SHAPES), scale=st.sampled_from(SCALES),
                  dtype=st.sampled_from([jnp.float32, jnp.bfloat16]), settings=augment_settings)
def test_augmentation_keeps_shape_dtype_and_finiteness(seed, shape, scale, dtype, settings):
  images = random_images(seed, shape, scale, dtype)
  out = data.augment(images, jax.random.PRNGKey(seed), **settings)
  assert out.shape == images.shape and out.dtype == images.dtype
  assert np.isfinite(np.asarray(out)).all()


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), shape=st.sampled_from(SHAPES), value=st.floats(-1e4, 1e4),
                  settings=augment_settings)
def test_a_constant_image_stays_constant_under_any_augmentation(seed, shape, value, settings):
  images = jnp.full(shape, value, jnp.float32)
  out = np.asarray(data.augment(images, jax.random.PRNGKey(seed), **settings))
  np.testing.assert_allclose(out, value, rtol=1e-5, atol=1e-3)


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), shape=st.sampled_from(SHAPES + [(1, 1, 1, 1), (4, 3, 9, 2)]))
def test_identity_settings_and_the_identity_warp_change_nothing(seed, shape):
  images = random_images(seed, shape)
  zero = dict(horizontal_flip=False, rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0)
  np.testing.assert_array_equal(data.augment(images, jax.random.PRNGKey(seed), **zero), images)
  identity = {name: jnp.zeros(shape[0]) for name in ("theta", "shift_x", "shift_y", "shear")}
  identity.update(zoom_x=jnp.ones(shape[0]), zoom_y=jnp.ones(shape[0]))
  matrices = augment_lib.affine_matrices(identity, shape[1], shape[2])
  np.testing.assert_allclose(matrices, np.broadcast_to(np.eye(3), (shape[0], 3, 3)), atol=1e-6)
  np.testing.assert_allclose(augment_lib.warp(images, matrices), images, rtol=1e-6, atol=1e-3)


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), shape=st.sampled_from(SHAPES))
def test_a_flip_is_an_involution(seed, shape):
  images = random_images(seed, shape)
  key = jax.random.PRNGKey(seed)
  once = data.augment(images, key, horizontal_flip=True)
  np.testing.assert_array_equal(data.augment(once, key, horizontal_flip=True), images)  # same key: same coins
  flips = np.asarray(augment_lib.random_flips(augment_lib.augment_keys(key)[1], shape[0]))
  np.testing.assert_array_equal(np.asarray(once), np.where(flips[:, None, None, None],
                                                           np.asarray(images)[:, :, ::-1], np.asarray(images)))


# --- preprocessing -------------------------------------------------------------------------------------------

def undo(mode, values, mean=None, std=None):
  """The inverse of each preprocessing mode, back to [0, 255]."""
  values = np.asarray(values, np.float64)
  if mode == "rescale":
    return values * 255
  if mode == "tf":
    return (values + 1) * 127.5
  if mode == "caffe":
    return (values + preprocess_lib.CAFFE_BGR_MEAN)[..., ::-1]
  if mode == "torch":
    mean, std = preprocess_lib.TORCH_MEAN, preprocess_lib.TORCH_STD
  return (values * np.asarray(std) + np.asarray(mean)) * 255


RANGES = {  # mode -> (low, high) per channel for inputs in [0, 255]
    "rescale": (0.0, 1.0),
    "tf": (-1.0, 1.0),
    "caffe": (-np.asarray(preprocess_lib.CAFFE_BGR_MEAN), 255 - np.asarray(preprocess_lib.CAFFE_BGR_MEAN)),
    "torch": (-np.divide(preprocess_lib.TORCH_MEAN, preprocess_lib.TORCH_STD),
              np.divide(np.subtract(1, preprocess_lib.TORCH_MEAN), preprocess_lib.TORCH_STD)),
}


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), mode=st.sampled_from(sorted(RANGES)), uint8=st.booleans())
def test_each_preprocessing_mode_is_invertible_and_stays_in_its_range(seed, mode, uint8):
  pixels = np.random.default_rng(seed).integers(0, 256, (2, 4, 4, 3))
  pixels[0, 0, 0], pixels[1, 0, 0] = 0, 255  # both ends of the range
  images = pixels.astype(np.uint8) if uint8 else pixels.astype(np.float32)
  out = np.asarray(data.preprocess(images, mode))
  assert out.dtype == np.float32 and out.shape == pixels.shape and np.isfinite(out).all()
  low, high = RANGES[mode]
  assert np.all(out >= np.asarray(low) - 1e-5) and np.all(out <= np.asarray(high) + 1e-5)
  np.testing.assert_allclose(undo(mode, out), pixels, atol=2e-3)


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), channels=st.sampled_from([1, 3]),
                  mean=st.lists(st.floats(0, 1), min_size=3, max_size=3),
                  std=st.lists(st.floats(0.01, 2), min_size=3, max_size=3))
def test_mean_std_preprocessing_is_invertible(seed, channels, mean, std):
  pixels = np.random.default_rng(seed).integers(0, 256, (2, 4, 4, channels)).astype(np.uint8)
  mean, std = tuple(mean[:channels]), tuple(std[:channels])
  out = np.asarray(data.preprocess(pixels, "mean_std", mean=mean, std=std))
  assert np.isfinite(out).all()
  np.testing.assert_allclose(undo("mean_std", out, mean, std), pixels, atol=0.05)
  # Per channel, order is kept: a brighter pixel stays brighter.
  flat_in, flat_out = pixels.reshape(-1, channels).astype(int), out.reshape(-1, channels)
  for c in range(channels):
    order = np.argsort(flat_in[:, c], kind="stable")
    assert np.all(np.diff(flat_out[order, c]) >= -1e-6)


# --- explainers on a tiny random model -----------------------------------------------------------------------

class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(4, activation="relu", name="conv1")(x)
    x = L.Conv(4, activation="relu", name="conv2")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(3, name="predictions")(x)


MODEL = Tiny()
IMAGE_SHAPE = (2, 8, 8, 3)
_init = jax.jit(lambda key: MODEL.init(key, jnp.zeros(IMAGE_SHAPE), train=False))


def case(seed, scale):
  """Fresh random weights and images; same shapes, so no explainer recompiles between examples."""
  variables = _init(jax.random.PRNGKey(seed))
  images = jnp.asarray(np.random.default_rng(seed).normal(0, scale, IMAGE_SHAPE), jnp.float32)
  return variables, images


explainer_inputs = dict(seed=st.integers(0, 2**16), scale=st.sampled_from(SCALES),
                        targets=st.lists(st.integers(0, 2), min_size=2, max_size=2))


@SETTINGS
@hypothesis.given(modifier=st.sampled_from([None, "guided", "relu"]), **explainer_inputs)
def test_saliency_maps_are_finite_non_negative_images(seed, scale, targets, modifier):
  variables, images = case(seed, scale)
  gradients = np.asarray(explain.saliency(MODEL, variables, images, targets, modifier=modifier))
  assert gradients.shape == IMAGE_SHAPE and np.isfinite(gradients).all()
  maps = np.asarray(explain.saliency_map(gradients))
  assert maps.shape == IMAGE_SHAPE[:3] and maps.min() >= 0
  np.testing.assert_array_equal(maps, np.abs(gradients).max(axis=-1))


@SETTINGS
@hypothesis.given(method=st.sampled_from(["gradcam", "gradcam++"]), layer=st.sampled_from([None, "conv1"]),
                  **explainer_inputs)
def test_cam_maps_are_normalised_to_the_unit_interval(seed, scale, targets, method, layer):
  variables, images = case(seed, scale)
  function = explain.gradcam if method == "gradcam" else explain.gradcam_plus_plus
  maps = np.asarray(function(MODEL, variables, images, targets, layer=layer))
  assert maps.shape == IMAGE_SHAPE[:3] and np.isfinite(maps).all()
  assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
  peaks = maps.max(axis=(1, 2))
  assert np.all((np.abs(peaks - 1) < 1e-5) | (peaks == 0)), peaks  # each map peaks at 1, or is all zero


@SETTINGS
@hypothesis.given(**explainer_inputs)
def test_guided_gradcam_is_guided_backprop_damped_by_the_cam(seed, scale, targets):
  variables, images = case(seed, scale)
  maps = np.asarray(explain.guided_gradcam(MODEL, variables, images, targets))
  guided = np.asarray(explain.saliency(MODEL, variables, images, targets, modifier="guided"))
  cam = np.asarray(explain.gradcam(MODEL, variables, images, targets))
  assert maps.shape == IMAGE_SHAPE and np.isfinite(maps).all()
  assert np.all(np.abs(maps) <= np.abs(guided) * (1 + 1e-5) + 1e-30)  # the CAM is in [0, 1]
  assert np.all(maps[cam == 0] == 0)


@SETTINGS
@hypothesis.given(**explainer_inputs)
def test_smoothgrad_without_noise_is_the_gradient_and_ig_of_the_image_itself_is_zero(seed, scale, targets):
  variables, images = case(seed, scale)
  smooth = np.asarray(explain.smoothgrad(MODEL, variables, images, targets, samples=2, noise=0.0))
  gradient = np.asarray(jax.grad(lambda x: jnp.sum(jnp.take_along_axis(
      MODEL.apply(variables, x), jnp.asarray(targets)[:, None], axis=1)))(images))
  assert smooth.shape == IMAGE_SHAPE and np.isfinite(smooth).all()
  np.testing.assert_allclose(smooth, gradient, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(gradient).max()))
  attributions = np.asarray(explain.integrated_gradients(MODEL, variables, images, targets, baseline=images,
                                                         steps=4))
  assert attributions.shape == IMAGE_SHAPE
  np.testing.assert_array_equal(attributions, 0)


@SETTINGS
@hypothesis.given(**explainer_inputs)
def test_deletion_and_insertion_areas_are_probabilities(seed, scale, targets):
  variables, images = case(seed, scale)
  maps = explain.saliency(MODEL, variables, images, targets)
  scores = explain.deletion_insertion(MODEL, variables, images, targets, maps, steps=4)
  for key in ("deletion", "insertion"):
    values = np.asarray(scores[key])
    assert values.shape == (IMAGE_SHAPE[0],) and np.all((values >= 0) & (values <= 1 + 1e-6)), values
