"""cnnjax.explain.perturbation checked against definitions (brute-force occlusion and ablation, exact Shapley values
by enumeration, RISE's normalisation) and against captum on the shipped resnet20 with the same weights."""
import io
import itertools
import math
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.explain import gradients, perturbation
from conftest import one_line_error

KEY = jax.random.PRNGKey(0)


class SmallCNN(nn.Module):
  """Conv-ReLU, Conv-ReLU, global mean, Dense: nonlinear, so perturbations interact."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Conv(5, (3, 3))(x))
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class Linear(nn.Module):
  """Logits linear in the input: every perturbation attribution has a closed form."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x.reshape(len(x), -1))


class PixelScore(nn.Module):
  """Class 0 scores one pixel's value, class 1 is the constant 1."""
  pixel: tuple = (3, 11)

  def __call__(self, x, train=False):
    value = x[:, self.pixel[0], self.pixel[1], 0]
    return jnp.stack([value, jnp.ones_like(value)], axis=-1)


def _init(model, images):
  return jax.jit(model.init)(KEY, images)


def _images(n, height, width, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, height, width, 3))


def _logits(model, variables, images):
  return np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(jnp.asarray(images)), np.float64)


def _second_logit(logits):  # defined once: a target function compiles once per function object
  return logits[:, 2]


# --- definitions -------------------------------------------------------------------------------------------

def test_one_pixel_occlusion_is_each_pixels_score_change():
  model = SmallCNN()
  images = _images(2, 6, 7)
  variables = _init(model, images)
  targets = np.array([0, 2])
  maps = np.asarray(perturbation.occlusion(model, variables, images, targets, window=1, strides=1, baseline=0.3))
  assert maps.shape == (2, 6, 7, 3)
  occluded = np.repeat(np.asarray(images)[None], 42, axis=0)
  for p, (h, w) in enumerate(itertools.product(range(6), range(7))):
    occluded[p, :, h, w, :] = 0.3
  logits = _logits(model, variables, occluded.reshape(-1, 6, 7, 3)).reshape(42, 2, 3)
  change = _logits(model, variables, images)[np.arange(2), targets] - logits[:, np.arange(2), targets]
  expected = change.T.reshape(2, 6, 7)
  np.testing.assert_allclose(maps, np.broadcast_to(expected[..., None], maps.shape), rtol=1e-4, atol=1e-6)


def test_occlusion_averages_the_windows_covering_each_pixel_with_cut_off_edges():
  # 8 rows, window 3, stride 2: starts 0, 2, 4, 6 (the last cut to 2 rows); 7 columns, window 3, stride 3:
  # starts 0, 3, 6 (the last 1 column), as captum places them.
  model = SmallCNN()
  images = _images(2, 8, 7)
  variables = _init(model, images)
  baseline = np.asarray(_images(1, 8, 7, seed=4)[0])
  targets = np.array([1, 0])
  maps = np.asarray(perturbation.occlusion(model, variables, images, targets, window=(3, 3), strides=(2, 3),
                                           baseline=baseline))
  clean = _logits(model, variables, images)[np.arange(2), targets]
  total, count = np.zeros((2, 8, 7)), np.zeros((8, 7))
  for top, left in itertools.product((0, 2, 4, 6), (0, 3, 6)):
    occluded = np.array(images)
    occluded[:, top:top + 3, left:left + 3] = baseline[top:top + 3, left:left + 3]
    total[:, top:top + 3, left:left + 3] += (clean - _logits(model, variables, occluded)[np.arange(2), targets])[
        :, None, None]
    count[top:top + 3, left:left + 3] += 1
  np.testing.assert_allclose(maps[..., 0], total / count, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(maps[..., 0], maps[..., 2])


def _feature_sums(params, images, baseline, mask, target):
  """(B, H, W) per-feature sum of w_target . (x - baseline) of a Linear model, spread over the feature's pixels."""
  weight = np.asarray(params["Dense_0"]["kernel"])[:, target].reshape(images.shape[1:])
  contribution = (np.asarray(images) - baseline) * weight
  sums = np.zeros((len(images), *mask.shape))
  for feature in np.unique(mask):
    where = mask == feature
    sums[:, where] = contribution[:, where].sum(axis=(1, 2))[:, None]
  return sums


def test_feature_ablation_of_a_linear_model_is_each_features_weighted_difference():
  model = Linear()
  images = _images(3, 6, 5)
  variables = _init(model, images)
  # Ids need not be contiguous or start at 0, and a feature need not be a rectangle.
  mask = perturbation.grid_mask(6, 5, (2, 3)) * 7 + 5
  mask[0, 4] = mask[5, 0]
  maps = np.asarray(perturbation.feature_ablation(model, variables, images, 1, feature_mask=mask, baseline=-0.5))
  assert maps.shape == (3, 6, 5, 3)
  np.testing.assert_allclose(maps[..., 1], _feature_sums(variables["params"], images, -0.5, mask, 1), rtol=1e-4,
                             atol=1e-5)


def test_kernel_shap_of_a_linear_model_is_exact_from_few_samples():
  model = Linear()
  images = _images(2, 4, 6)
  variables = _init(model, images)
  mask = perturbation.grid_mask(4, 6, (2, 3))
  values = np.asarray(perturbation.kernel_shap(model, variables, images, [2, 0], feature_mask=mask, samples=40,
                                               baseline=0.25))
  for b, target in enumerate((2, 0)):
    np.testing.assert_allclose(values[b, ..., 0], _feature_sums(variables["params"], images[b:b + 1], 0.25, mask,
                                                                target)[0], rtol=1e-3, atol=1e-4)


def _exact_shapley(model, variables, image, baseline, mask, target):
  """Shapley values of the features of `mask` by enumerating all coalitions."""
  count = mask.max() + 1
  coalitions = np.array(list(itertools.product((False, True), repeat=count)))
  value = _logits(model, variables, np.where(coalitions[:, mask][..., None], image[None], baseline))[:, target]
  index = {tuple(c): i for i, c in enumerate(coalitions)}
  shapley = np.zeros(count)
  for feature in range(count):
    for coalition in coalitions[~coalitions[:, feature]]:
      size, joined = coalition.sum(), coalition.copy()
      joined[feature] = True
      weight = math.factorial(size) * math.factorial(count - size - 1) / math.factorial(count)
      shapley[feature] += weight * (value[index[tuple(joined)]] - value[index[tuple(coalition)]])
  return shapley, value[-1] - value[0]


def test_kernel_shap_approaches_exact_shapley_values_and_adds_up():
  model = SmallCNN()
  images = _images(2, 4, 6, seed=2) * 2
  variables = _init(model, images)
  mask = perturbation.grid_mask(4, 6, 2)  # 2 x 3 = 6 features, 64 coalitions
  values = np.asarray(perturbation.kernel_shap(model, variables, images, [0, 1], feature_mask=mask,
                                               samples=4000))
  for b, target in enumerate((0, 1)):
    exact, gap = _exact_shapley(model, variables, np.asarray(images[b]), 0.0, mask, target)
    estimate = np.array([values[b][mask == f][0, 0] for f in range(6)])
    np.testing.assert_allclose(estimate, exact, atol=0.05 * np.abs(exact).max())
    np.testing.assert_allclose(estimate.sum(), gap, rtol=1e-3, atol=1e-4)  # the 1e6 endpoint weights


def test_rise_highlights_the_scored_pixel_and_is_normalised_by_the_keep_probability():
  model = PixelScore(pixel=(3, 11))
  images = jnp.ones((1, 16, 16, 3))
  maps = np.asarray(perturbation.rise(model, {}, images, [[0, 1]], masks=1500, cells=4, probability=0.3))
  assert maps.shape == (1, 2, 16, 16)
  peak = np.unravel_index(np.argmax(maps[0, 0]), (16, 16))
  assert max(abs(peak[0] - 3), abs(peak[1] - 11)) <= 1, peak
  # Far from the pixel the mask values are independent of it: E[M(far) M(pixel)] / p = p, well below the peak.
  np.testing.assert_allclose(maps[0, 0, 12:, :4].mean(), 0.3, atol=0.03)
  assert maps[0, 0, 3, 11] > 1.5 * 0.3
  # A constant score of 1: the mean mask over the keep probability, 1 everywhere in expectation.
  np.testing.assert_allclose(maps[0, 1].mean(), 1, atol=0.03)
  assert np.abs(maps[0, 1] - 1).max() < 0.15


def test_rise_masks_upsample_as_the_reference_codes_skimage_resize():
  ndimage = pytest.importorskip("scipy.ndimage")
  grid = np.random.default_rng(0).random((5, 5))
  for size in (30, 18):  # (s + 1) x ceil(H / s) for H = 25 and 15
    weights = perturbation.upsampling_matrix(5, size)
    # skimage.transform.resize(order=1, mode='reflect', anti_aliasing=False) is this ndimage.zoom call.
    expected = ndimage.zoom(grid, size / 5, order=1, mode="mirror", grid_mode=True)
    np.testing.assert_allclose(weights @ grid @ weights.T, expected, rtol=1e-5, atol=1e-6)


def _explainers():
  mask = perturbation.grid_mask(8, 8, 4)
  return {
      "occlusion": lambda *a, **k: perturbation.occlusion(*a, window=(3, 2), strides=2, **k),
      "feature_ablation": lambda *a, **k: perturbation.feature_ablation(*a, feature_mask=mask, baseline=0.1, **k),
      "kernel_shap": lambda *a, **k: perturbation.kernel_shap(*a, feature_mask=mask, samples=11, **k),
      "rise": lambda *a, **k: perturbation.rise(*a, masks=9, cells=3, **k),
  }


@pytest.mark.parametrize("name", ["occlusion", "feature_ablation", "kernel_shap", "rise"])
def test_targets_chunks_and_batches_do_not_change_the_explanation(name):
  explain = _explainers()[name]
  model = SmallCNN()
  images = _images(3, 8, 8)
  variables = _init(model, images)
  targets = np.array([[0, 2], [1, 1], [2, 0]])
  together = np.asarray(explain(model, variables, images, targets))
  assert together.shape[:2] == (3, 2)
  for k in range(2):  # K targets from one set of perturbed forwards = K single calls
    np.testing.assert_allclose(together[:, k], explain(model, variables, images, targets[:, k]), rtol=1e-5,
                               atol=1e-5)
  np.testing.assert_allclose(explain(model, variables, images, _second_logit), explain(model, variables, images, 2),
                             rtol=1e-6, atol=1e-6)
  single = np.asarray(explain(model, variables, images, targets[:, 1]))
  for chunk in (1, 4):  # 4 leaves a remainder chunk for every method here
    np.testing.assert_allclose(explain(model, variables, images, targets[:, 1], chunk_size=chunk), single,
                               rtol=1e-5, atol=1e-5)
  # Random draws are keyed by each image's pixels: an image alone gets what it gets inside the batch.
  np.testing.assert_allclose(explain(model, variables, images[1:2], targets[1:2, 1]), single[1:2], rtol=1e-5,
                             atol=1e-5)


def test_bad_inputs_give_one_line_errors():
  model = SmallCNN()
  images = _images(2, 8, 8)
  variables = _init(model, images)
  occlusion = lambda **k: perturbation.occlusion(model, variables, images, 0, **k)
  one_line_error(lambda: occlusion(window=(0, 2)), "window must be a positive int or a (height, width) pair")
  one_line_error(lambda: occlusion(window=(3, 2, 2)), "window must be", "(3, 2, 2)")
  one_line_error(lambda: occlusion(window=9), "larger than the images' (H, W) = (8, 8)")
  one_line_error(lambda: occlusion(window=3, strides=(4, 1)), "strides (4, 1) must be at most the window (3, 3)")
  one_line_error(lambda: occlusion(window=3, strides=1.5), "strides must be")
  one_line_error(lambda: occlusion(window=3, chunk_size=0), "chunk_size must be a positive number")
  one_line_error(lambda: occlusion(window=3, baseline=np.zeros((5, 3))), "baseline of shape (5, 3)")
  ablation = lambda mask: perturbation.feature_ablation(model, variables, images, 0, feature_mask=mask)
  one_line_error(lambda: ablation(np.zeros((8, 7), int)), "feature_mask must be an (H, W) = (8, 8) integer",
                  "grid_mask(8, 8, 8)", "got shape (8, 7)")
  one_line_error(lambda: ablation(np.zeros((8, 8))), "integer array", "dtype float64")
  shap = lambda mask, **k: perturbation.kernel_shap(model, variables, images, 0, feature_mask=mask, **k)
  one_line_error(lambda: shap(np.zeros((8, 8), int)), "a single feature", "at least two features")
  one_line_error(lambda: shap(perturbation.grid_mask(8, 8, 4), samples=1), "samples must be an int of at least 2")
  rise = lambda **k: perturbation.rise(model, variables, images, 0, **k)
  one_line_error(lambda: rise(masks=0), "masks must be a positive int")
  one_line_error(lambda: rise(cells=0), "cells must be an int from 1 to the image size 8")
  one_line_error(lambda: rise(probability=0.0), "probability must be in (0, 1]")
  one_line_error(lambda: perturbation.grid_mask(8, 8, 0), "cell must be a positive int")
  one_line_error(lambda: perturbation.occlusion(model, variables, images[0], 0, window=2), "(B, H, W, C) batch",
                  "images[None]")


# --- against captum on the shipped resnet20 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet20(shared_dir):
  """(torch model, cnnjax model, variables, preprocessed (B, H, W, C) CIFAR images, predicted classes)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("captum")
  from cnnjax import data
  from PIL import Image
  from tests import peers
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # on a few shared cores, one thread per process is the fastest for a small net
  torch_model, model, variables = peers.resnet20_pair(shared_dir)
  with zipfile.ZipFile(shared_dir / "data" / "cifar10_jpeg" / "train.zip") as archive:
    names = [f"train/{name}/0007.jpg" for name in ("airplane", "cat", "dog", "ship")]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names])
  images = np.asarray(data.preprocess(pixels.astype(np.float32), "torch"))
  classes = _logits(model, variables, images).argmax(1)
  yield torch_model, model, variables, images, classes
  torch.set_num_threads(threads)


def _min_correlation(ours, theirs):
  from tests import peers
  return peers.correlation(ours, theirs).min()


def test_occlusion_and_input_x_gradient_match_captum(resnet20):
  import captum.attr
  import torch
  from tests import peers
  torch_model, model, variables, images, classes = resnet20
  inputs, target = peers.nchw(images), torch.from_numpy(classes)
  ours = perturbation.occlusion(model, variables, images, classes, window=4, strides=2, baseline=0.0)
  theirs = captum.attr.Occlusion(torch_model).attribute(inputs, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2),
                                                        baselines=0, target=target, perturbations_per_eval=64)
  assert _min_correlation(ours, peers.nhwc(theirs)) >= 0.99
  ours = gradients.input_x_gradient(model, variables, images, classes)
  theirs = captum.attr.InputXGradient(torch_model).attribute(inputs.requires_grad_(), target=target)
  assert _min_correlation(ours, peers.nhwc(theirs)) >= 0.99


def test_feature_ablation_and_kernel_shap_match_captum(resnet20):
  import captum.attr
  import torch
  from tests import peers
  torch_model, model, variables, images, classes = resnet20
  inputs = peers.nchw(images)
  mask = perturbation.grid_mask(32, 32, 8)
  ours = perturbation.feature_ablation(model, variables, images, classes, feature_mask=mask)
  theirs = captum.attr.FeatureAblation(torch_model).attribute(
      inputs, feature_mask=torch.from_numpy(mask.astype(np.int64))[None, None], baselines=0,
      target=torch.from_numpy(classes), perturbations_per_eval=16)
  assert _min_correlation(ours, peers.nhwc(theirs)) >= 0.99
  # KernelSHAP's estimates are noisy on both sides: 4 quadrants and 1000 coalitions per image put two
  # independent runs at correlation 0.996 or more (16 features need many thousands).
  mask = perturbation.grid_mask(32, 32, 16)
  ours = perturbation.kernel_shap(model, variables, images, classes, feature_mask=mask, samples=1000)
  torch.manual_seed(0)
  shap = captum.attr.KernelShap(torch_model)
  theirs = np.concatenate([peers.nhwc(shap.attribute(
      inputs[b:b + 1], feature_mask=torch.from_numpy(mask.astype(np.int64))[None, None], baselines=0,
      target=int(classes[b]), n_samples=1000, perturbations_per_eval=200)) for b in range(len(images))])
  assert _min_correlation(ours, theirs) >= 0.99
