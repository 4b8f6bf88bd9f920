"""cnnjax.explain.metrics' faithfulness and robustness metrics: hand-derived cases on linear models, and captum's
infidelity / sensitivity_max and pytorch-grad-cam's ROAD on the same weights and the same perturbations."""
import functools
import io
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnnjax import data, explain, pretrained
from cnnjax.explain import metrics, sampling
from cnnjax.models import layers as L
from conftest import one_line_error


class Linear(nn.Module):
  """Logits linear in the input: its gradient is the weights everywhere, input x gradient its exact contributions."""

  @nn.compact
  def __call__(self, x, train=False):
    return L.Dense(3, name="predictions")(L.Flatten(name="flatten")(x))


class MLP(nn.Module):
  """Flatten -> Dense-ReLU -> Dense: piecewise linear, so its saliency moves when a ReLU flips."""

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Dense(6, activation="relu", name="hidden")(L.Flatten(name="flatten")(x))
    return L.Dense(3, name="predictions")(x)


def _setup(model, shape=(3, 6, 6, 2)):
  images = jax.random.normal(jax.random.PRNGKey(1), shape)
  return model, jax.jit(model.init)(jax.random.PRNGKey(0), images), images


TARGETS = np.array([0, 2, 1])


# --- hand-derived cases -------------------------------------------------------------------------------------

def test_infidelity_of_a_linear_score_is_the_noise_variance_times_the_attribution_error():
  # f(x) - f(x - I) = w.I exactly, so infidelity(phi) = E[(I.(phi - w))^2] = noise^2 ||phi - w||^2.
  model, variables, images = _setup(Linear())
  infidelity = functools.partial(metrics.infidelity, model, variables, images, TARGETS, samples=200, noise=0.01)
  weights = explain.saliency(model, variables, images, TARGETS)
  np.testing.assert_allclose(infidelity(weights), 0, atol=1e-10)
  # Input x gradient is exact against I / x (captum's multiply_by_inputs), not against I itself.
  contributions = explain.input_x_gradient(model, variables, images, TARGETS)
  np.testing.assert_allclose(infidelity(contributions, multiply_by_inputs=True), 0, atol=1e-10)
  assert np.all(np.asarray(infidelity(contributions)) > 1e-5)
  wrong = jax.random.normal(jax.random.PRNGKey(5), images.shape)
  expected = 0.01 ** 2 * np.sum(np.asarray(wrong - weights) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(infidelity(wrong), expected, rtol=0.3)  # a mean of 200 chi-squares: 10% spread
  # Normalisation finds the scale: 3 w is exact up to beta = 1/3, and 4 ||w||^2 noise^2 off without it.
  np.testing.assert_allclose(infidelity(3 * weights, normalize=True), 0, atol=1e-10)
  np.testing.assert_allclose(infidelity(3 * weights), 4 * 0.01 ** 2 * np.sum(np.asarray(weights) ** 2,
                                                                              axis=(1, 2, 3)), rtol=0.3)


def test_mufidelity_of_exact_contributions_is_one_and_of_their_negation_minus_one():
  # Setting S to the baseline b drops a linear score by sum_S w (x - b): exactly the attributions w (x - b) over S.
  model, variables, images = _setup(Linear())
  weights = explain.saliency(model, variables, images, TARGETS)
  for grid_size, baseline in ((3, 0.0), (None, 0.5)):
    exact = weights * (images - baseline)
    np.testing.assert_allclose(metrics.mufidelity(model, variables, images, TARGETS, exact, grid_size=grid_size,
                                                  baseline=baseline, samples=40), 1, atol=1e-5)
    np.testing.assert_allclose(metrics.mufidelity(model, variables, images, TARGETS, -exact, grid_size=grid_size,
                                                  baseline=baseline, samples=40), -1, atol=1e-5)
  wrong = jax.random.normal(jax.random.PRNGKey(5), images.shape)
  assert np.all(np.asarray(metrics.mufidelity(model, variables, images, TARGETS, wrong, grid_size=3,
                                              samples=40)) < 0.9)
  # (B, H, W) maps count per pixel: the channel sums of the exact contributions are exact too.
  maps = jnp.sum(weights * images, axis=-1)
  np.testing.assert_allclose(metrics.mufidelity(model, variables, images, TARGETS, maps, grid_size=3, samples=40),
                             1, atol=1e-5)


def test_mufidelity_subsets_do_not_depend_on_chunking_or_on_the_batch():
  model, variables, images = _setup(MLP())
  attributions = explain.saliency(model, variables, images, TARGETS)
  # Four chunks of 7 and a remainder of 2 for the batch; one chunk of 30 for an image alone.
  whole = metrics.mufidelity(model, variables, images, TARGETS, attributions, samples=30, grid_size=3, chunk_size=7)
  assert np.all(np.abs(np.asarray(whole)) < 1) and np.any(np.asarray(whole) != 0)
  alone = metrics.mufidelity(model, variables, images[1:2], TARGETS[1:2], attributions[1:2], samples=30, grid_size=3)
  np.testing.assert_allclose(alone, whole[1:2], atol=1e-6)
  other_seed = metrics.mufidelity(model, variables, images, TARGETS, attributions, samples=30, grid_size=3,
                                  chunk_size=7, seed=1)
  assert not np.allclose(other_seed, whole)


def test_rank_correlation_is_scipys_spearman_with_ties():
  rng = np.random.default_rng(0)
  first = rng.integers(0, 5, size=(4, 30)).astype(np.float32)  # many ties
  second = first + rng.normal(size=(4, 30)).astype(np.float32)
  np.testing.assert_allclose(metrics.rank_correlation(jnp.asarray(first), jnp.asarray(second)),
                             metrics.spearman(first, second), atol=1e-5)
  np.testing.assert_allclose(metrics.rank_correlation(jnp.ones((2, 5)), jnp.arange(10.0).reshape(2, 5)), 0)


def test_sensitivity_max_of_saliency_on_a_linear_model_is_zero_and_positive_on_an_mlp():
  model, variables, images = _setup(Linear())
  np.testing.assert_array_equal(metrics.sensitivity_max(explain.saliency, model, variables, images, TARGETS), 0)
  model, variables, images = _setup(MLP())
  small, large = (metrics.sensitivity_max(explain.saliency, model, variables, images, TARGETS, samples=16,
                                          radius=radius) for radius in (1e-6, 1.0))
  assert np.all(np.asarray(small) < 1e-3) and np.all(np.asarray(large) > 0.05)
  # Explainer options reach the explainer: guided backprop moves otherwise under the same perturbations.
  guided = metrics.sensitivity_max(explain.saliency, model, variables, images, TARGETS, samples=16, radius=1.0,
                                   modifier="guided")
  assert np.all(np.asarray(guided) >= 0) and not np.allclose(guided, large)


# --- against captum on the same weights and perturbations ------------------------------------------------------

def _torch_mlp(variables):
  """MLP in torch (NCHW in, flattened as NHWC) with the same weights."""
  torch = pytest.importorskip("torch", reason="torch is a test peer: pip install -r requirements-peers.txt")
  params = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), variables["params"])

  class TorchMLP(torch.nn.Module):
    def forward(self, x):
      x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
      hidden = torch.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
      return hidden @ params["predictions"]["kernel"] + params["predictions"]["bias"]

  return TorchMLP()


def _by_image(draws, peers):
  """(n, B, H, W, C) draws -> the (B * n, C, H, W) order of captum's repeat_interleave'd inputs."""
  draws = np.asarray(draws)
  return peers.nchw(np.swapaxes(draws, 0, 1).reshape(-1, *draws.shape[2:]))


def test_infidelity_and_sensitivity_max_equal_captums_on_the_same_perturbations():
  captum_metrics = pytest.importorskip("captum.metrics")
  captum_attr = pytest.importorskip("captum.attr")
  model, variables, images = _setup(MLP())
  torch_model = _torch_mlp(variables)
  import peers  # pylint: disable=import-outside-toplevel  # tests/peers.py, which imports torch
  import torch  # pylint: disable=import-outside-toplevel
  inputs, target, samples = peers.nchw(images), torch.tensor(TARGETS), 20
  keys = sampling.image_keys(images, 0)
  noise = _by_image(metrics.normal_perturbations(keys, jnp.arange(samples), images.shape[1:], 0.1), peers)
  attributions = explain.saliency(model, variables, images, TARGETS)
  for normalize in (False, True):
    ours = metrics.infidelity(model, variables, images, TARGETS, attributions, samples=samples, noise=0.1,
                              normalize=normalize)
    theirs = captum_metrics.infidelity(torch_model, lambda x: (noise, x - noise), inputs, peers.nchw(attributions),
                                       target=target, n_perturb_samples=samples, normalize=normalize)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-3, atol=1e-8)  # torch's float32 error: 1e-9
    assert np.max(np.asarray(ours)) > 1e-6  # the ReLUs make it non-zero

  saliency = captum_attr.Saliency(torch_model)

  def explanation(x, target):  # captum's own Saliency without its abs, as cnnjax's
    out = saliency.attribute(x, target=target, abs=False)
    return tuple(o.contiguous() for o in out) if isinstance(out, tuple) else out.contiguous()

  deltas = _by_image(metrics.uniform_perturbations(keys, jnp.arange(samples), images.shape[1:], 0.5), peers)
  ours = metrics.sensitivity_max(explain.saliency, model, variables, images, TARGETS, samples=samples, radius=0.5)
  theirs = captum_metrics.sensitivity_max(explanation, inputs, lambda x, radius: x + deltas, perturb_radius=0.5,
                                          n_perturb_samples=samples, target=target)
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-6)
  assert np.max(np.asarray(ours)) > 0.1


# --- ROAD against pytorch-grad-cam ----------------------------------------------------------------------------

def _road_peer():
  pytest.importorskip("torch", reason="torch is a test peer: pip install -r requirements-peers.txt")
  road = pytest.importorskip("pytorch_grad_cam.metrics.road", reason="pytorch-grad-cam is a test peer: pip install "
                             "-r requirements-peers.txt")
  import peers  # pylint: disable=import-outside-toplevel
  return road, peers


def test_linear_imputation_solves_the_neighbour_average_system():
  # A linear ramp is its own neighbour average (the weights are symmetric): imputing the interior recovers it.
  rows, cols = np.mgrid[:10, :12].astype(np.float32)
  ramp = np.stack([0.5 * rows - 0.25 * cols + 1, rows + cols], axis=-1)[None]
  interior = np.zeros((1, 10, 12), bool)
  interior[0, 1:-1, 1:-1] = True
  np.testing.assert_allclose(metrics.noisy_linear_imputation(ramp, interior, noise=0.0), ramp, atol=1e-4)
  # One removed pixel is exactly the weighted mean of its 8 neighbours (1/6 beside, 1/12 diagonally).
  image = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1) ** 2
  centre = np.zeros((1, 3, 3), bool)
  centre[0, 1, 1] = True
  neighbours = image[0, :, :, 0]
  expected = (neighbours[0, 1] + neighbours[1, 0] + neighbours[1, 2] + neighbours[2, 1]) / 6 + (
      neighbours[0, 0] + neighbours[0, 2] + neighbours[2, 0] + neighbours[2, 2]) / 12
  imputed = np.asarray(metrics.noisy_linear_imputation(image, centre, noise=0.0))
  np.testing.assert_allclose(imputed[0, 1, 1, 0], expected, rtol=1e-5)
  np.testing.assert_array_equal(imputed[~centre], image[~centre])


def test_linear_imputation_equals_pytorch_grad_cams_sparse_solve():
  road, peers = _road_peer()
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 20, 16, 3)).astype(np.float32)
  removed = np.stack([rng.random((20, 16)) < 0.5,  # scattered pixels
                      np.add.outer(np.arange(20), np.arange(16)) > 14,  # one large region
                      rng.random((20, 16)) < 0.9])
  ours = np.asarray(metrics.noisy_linear_imputation(images, removed, noise=0.0))
  for image, mask, imputed in zip(images, removed, ours):
    kept = torch.from_numpy((~mask).astype(np.float32))  # pytorch-grad-cam's mask: 1 where a pixel is kept
    theirs = road.NoisyLinearImputer(noise=0.0)(peers.nchw(image[None])[0], kept)
    np.testing.assert_allclose(imputed, peers.nhwc(theirs[None])[0], atol=5e-5)
  noisy = np.asarray(metrics.noisy_linear_imputation(images, removed, noise=0.01))
  np.testing.assert_array_equal(noisy[~removed], images[~removed])
  assert abs(np.std(noisy[removed] - ours[removed]) - 0.01) < 0.001


@pytest.fixture(scope="module")
def cifar(shared_dir):
  """The shipped resnet20, 20 CIFAR-10 training images (two per class) and their labels."""
  model, variables = pretrained.load(str(shared_dir / "weights" / "resnet_cifar" / "resnet20-12fca82f.npz"))
  with zipfile.ZipFile(shared_dir / "data" / "cifar10_jpeg" / "train.zip") as archive:
    names = sorted(archive.namelist())
    picks = [names[label * 5000 + index] for label in range(10) for index in (3, 11)]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in picks])
  images = jnp.asarray(data.preprocess(pixels.astype(np.float32), "torch"))
  return model, variables, images, np.repeat(np.arange(10), 2)


def test_road_equals_pytorch_grad_cams_on_the_same_maps_and_weights(cifar, shared_dir, monkeypatch):
  road, peers = _road_peer()
  from pytorch_grad_cam.utils import model_targets  # pylint: disable=import-outside-toplevel
  torch_model = peers.resnet20_pair(shared_dir)[0]  # the same weights, from the .th twin of the .npz
  model, variables, images, labels = cifar
  maps = np.asarray(explain.gradcam(model, variables, images, labels))[::5]  # the batch the random-logit test takes
  images, labels = images[::5], labels[::5]

  class Noiseless(road.NoisyLinearImputer):
    def __init__(self):
      super().__init__(noise=0.0)

  monkeypatch.setattr(road, "NoisyLinearImputer", Noiseless)  # what its ROAD metrics construct, noise-free
  peer_targets = [model_targets.ClassifierOutputSoftmaxTarget(int(label)) for label in labels]
  inputs, percentiles = peers.nchw(images), (20, 50, 80)
  ours = metrics.road(model, variables, images, labels, maps, percentiles=percentiles, noise=0.0)
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():  # pytorch-grad-cam's percentile p removes 100 - p percent
    most = np.stack([road.ROADMostRelevantFirst(100 - p)(inputs, maps, peer_targets, torch_model)
                     for p in percentiles], axis=1)
    least = np.stack([road.ROADLeastRelevantFirst(100 - p)(inputs, maps, peer_targets, torch_model)
                      for p in percentiles], axis=1)
  np.testing.assert_allclose(ours["most_curve"], most, atol=2e-5)
  np.testing.assert_allclose(ours["least_curve"], least, atol=2e-5)
  # ROADCombined's (LeRF average - MoRF average) / 2.
  np.testing.assert_allclose(ours["road"], (least.mean(axis=1) - most.mean(axis=1)) / 2, atol=2e-5)
  assert np.ptp(np.asarray(ours["most_curve"])) > 0.1  # the probabilities really move
  only_most = metrics.road(model, variables, images, labels, maps, percentiles=percentiles, order="most", noise=0.0)
  assert set(only_most) == {"road", "most_curve"}
  np.testing.assert_allclose(only_most["road"], most.mean(axis=1), atol=2e-5)


def test_random_logit_decorrelates_gradcam_but_not_guided_backprop(cifar):
  model, variables, images, labels = cifar
  gradcam = explain.randomization_check(model, variables, images, labels, method="gradcam", test="random_logit")
  assert np.all(gradcam["random_class"] != labels) and np.all((gradcam["random_class"] >= 0)
                                                              & (gradcam["random_class"] < 10))
  assert len(set(gradcam["random_class"].tolist())) > 5  # uniform over the other classes
  guided = explain.randomization_check(model, variables, images, labels, method="guided", test="random_logit")
  np.testing.assert_array_equal(guided["random_class"], gradcam["random_class"])  # keyed by image and seed
  # Sixt et al.: Grad-CAM follows the class; guided backprop (a modified backprop rule) barely does.
  assert np.mean(gradcam["spearman"]) < 0.3 < 0.7 < np.mean(guided["spearman"])
  alone = metrics.random_other_classes(images[4:5], labels[4:5], 10, 0)  # the same class alone as in the batch
  assert int(alone[0]) == guided["random_class"][4]


# --- one-line errors ------------------------------------------------------------------------------------------

def test_bad_inputs_give_one_line_errors():
  model, variables, images = _setup(Linear())
  maps, attributions = jnp.ones(images.shape[:3]), jnp.ones(images.shape)
  fidelity = functools.partial(metrics.mufidelity, model, variables, images, TARGETS)
  one_line_error(lambda: fidelity(attributions, grid_size=0), "grid_size", "None")
  one_line_error(lambda: fidelity(attributions, subset_percent=1.5), "subset_percent")
  one_line_error(lambda: fidelity(attributions, samples=1), "samples", "two")
  one_line_error(lambda: fidelity(attributions[:, :3]), "attributions must be", "(3, 3, 6, 2)")
  one_line_error(lambda: fidelity(attributions, chunk_size=0), "chunk_size")
  one_line_error(lambda: metrics.mufidelity(model, variables, images, np.zeros((3, 2), int), attributions),
                  "one target per image")
  one_line_error(lambda: metrics.infidelity(model, variables, images, TARGETS, attributions, noise=0), "noise")
  one_line_error(lambda: metrics.infidelity(model, variables, images, [0, 5, 1], attributions), "out of range")
  sensitivity = functools.partial(metrics.sensitivity_max, explain.saliency, model, variables, images, TARGETS)
  one_line_error(lambda: sensitivity(radius=0), "radius")
  one_line_error(lambda: sensitivity(samples=0), "samples")
  one_line_error(lambda: metrics.sensitivity_max("saliency", model, variables, images, TARGETS), "explainer")
  road = functools.partial(metrics.road, model, variables, images, TARGETS)
  one_line_error(lambda: road(maps, order="middle"), "order", "combined")
  one_line_error(lambda: road(maps, percentiles=(50, 100)), "percentiles", "(0, 100)")
  one_line_error(lambda: road(maps, percentiles=()), "percentiles")
  one_line_error(lambda: road(maps[:, :2]), "maps must be")
  one_line_error(lambda: metrics.noisy_linear_imputation(images, maps[0]), "removed", "(3, 6, 6)")
  check = functools.partial(explain.randomization_check, model, variables, images)
  one_line_error(lambda: check(TARGETS, method="saliency", test="bogus"), "random_logit")
  one_line_error(lambda: check(lambda logits: logits[:, 0], method="saliency", test="random_logit"),
                  "class targets")
  cascade = check(TARGETS, method="saliency", test="cascade")  # the default test, by name
  assert [entry["layer"] for entry in cascade] == ["predictions"]
