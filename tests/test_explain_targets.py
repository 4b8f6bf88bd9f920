"""Targets of every kind, the noise tunnel, the gradient family and `cost`, checked against their definitions
(K single calls, finite differences, completeness, linear models) and captum on the shipped resnet20."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import explain, models
from cnnjax.models import layers as L

KEY = jax.random.PRNGKey(0)


class SmallCNN(nn.Module):
  """Conv-ReLU, Conv-ReLU, GAP, Dense: a CAM layer, ReLUs for the modifiers, and a smooth enough score."""

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(4, activation="relu", name="conv1")(x)
    x = L.Conv(6, activation="relu", name="conv2")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(5, name="predictions")(x)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return L.Dense(4, name="predictions")(L.Flatten(name="flatten")(x))


def _setup(model=None, n=3, size=8):
  model = model or SmallCNN()
  images = jax.random.normal(jax.random.PRNGKey(1), (n, size, size, 3))
  return model, jax.jit(model.init)(KEY, images), images


# Explainers that take (model, variables, images, targets) and nothing else needed.
EXPLAINERS = {
    "saliency": explain.saliency,
    "guided": functools.partial(explain.saliency, modifier="guided"),
    "input_x_gradient": explain.input_x_gradient,
    "gradcam": explain.gradcam,
    "gradcam++": explain.gradcam_plus_plus,
    "guided_gradcam": explain.guided_gradcam,
    "integrated_gradients": functools.partial(explain.integrated_gradients, steps=6),
    "smoothgrad": functools.partial(explain.smoothgrad, samples=3),
    "gradient_shap": functools.partial(explain.gradient_shap, samples=4),
}


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_k_targets_per_image_equal_k_single_calls(name):
  model, variables, images = _setup()
  targets = jnp.array([[0, 4], [2, 2], [1, 3]])
  many = EXPLAINERS[name](model, variables, images, targets)
  assert many.shape[:2] == (3, 2)
  for k in range(2):
    single = EXPLAINERS[name](model, variables, images, targets[:, k])
    np.testing.assert_allclose(many[:, k], single, rtol=1e-5, atol=1e-6, err_msg=f"{name} target column {k}")


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_a_target_function_picking_a_logit_equals_that_class(name):
  model, variables, images = _setup()
  by_function = EXPLAINERS[name](model, variables, images, lambda logits: logits[:, 3])
  np.testing.assert_allclose(by_function, EXPLAINERS[name](model, variables, images, 3), rtol=1e-5, atol=1e-6)


def test_a_softmax_probability_target_has_the_finite_difference_gradient():
  model, variables, images = _setup(n=1)
  probability = lambda logits: jax.nn.softmax(logits)[:, 2]
  gradient = np.asarray(explain.saliency(model, variables, images, probability))[0]
  score = lambda x: float(probability(model.apply(variables, x, train=False))[0])
  step, rng = 1e-2, np.random.default_rng(0)
  for _ in range(5):
    index = tuple(rng.integers(0, s) for s in images.shape[1:])
    bump = np.zeros(images.shape, np.float32)
    bump[(0, *index)] = step
    numeric = (score(images + bump) - score(images - bump)) / (2 * step)
    assert abs(numeric - gradient[index]) < 1e-3 + 0.02 * abs(numeric), (index, numeric, gradient[index])


def test_an_int_target_is_checked_inside_a_callers_jit():
  model, variables, images = _setup()
  inside = jax.jit(lambda v, x: explain.saliency(model, v, x, 3))(variables, images)
  np.testing.assert_allclose(inside, explain.saliency(model, variables, images, jnp.array([3, 3, 3])), rtol=1e-6)
  with pytest.raises(ValueError, match="out of range"):
    jax.jit(lambda v, x: explain.saliency(model, v, x, 5))(variables, images)


def test_bad_targets_are_refused_in_one_line():
  model, variables, images = _setup()
  for bad, fragment in (([[0, 1]], "shape (3, K)"), (jnp.zeros((3, 2, 1), jnp.int32), "one class per image"),
                        (jnp.array([[0, 9], [0, 0], [0, 0]]), "out of range"),
                        (jnp.array([0.5, 1, 2]), "integer")):
    with pytest.raises(ValueError, match=".*") as error:
      explain.saliency(model, variables, images, bad)
    assert fragment in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ValueError, match="one score per image"):
    explain.saliency(model, variables, images, lambda logits: logits)


def test_k_class_gradcam_is_one_forward_pass_not_k():
  """Ten classes of resnet20 at batch 128 in one (B, 10) call: at most 0.3x the FLOPs of ten single calls."""
  model = models.create("resnet20", num_classes=10)
  images = jnp.zeros((128, 32, 32, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=False), KEY, images[:1])
  variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
  ten = explain.cost(explain.gradcam, model, variables, images, jnp.tile(jnp.arange(10), (128, 1)))
  one = explain.cost(explain.gradcam, model, variables, images, jnp.zeros(128, jnp.int32))
  assert ten["flops"] <= 0.3 * 10 * one["flops"], (ten, one)
  assert 0.8 <= one["forwards"] <= 1.5, one


def test_cost_counts_forward_passes():
  model, variables, images = _setup(model=models.create("simple_cnn", num_classes=10), size=32)
  targets = jnp.array([0, 1, 2])
  cam = explain.cost(explain.gradcam, model, variables, images, targets)
  saliency = explain.cost(explain.saliency, model, variables, images, targets)
  ig = explain.cost(explain.integrated_gradients, model, variables, images, targets, steps=8)
  assert 0.8 <= cam["forwards"] <= 1.5, cam
  assert 2 <= saliency["forwards"] <= 4, saliency  # a forward and a backward through every layer
  assert ig["forwards"] >= 6 * saliency["forwards"], (ig, saliency)  # eight path points
  assert cam["bytes"] > images.nbytes


# --- noise tunnel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["saliency", "gradcam", "integrated_gradients"])
def test_noise_tunnel_without_noise_is_the_method(name):
  model, variables, images = _setup()
  tunnel = explain.noise_tunnel(EXPLAINERS[name], model, variables, images, [0, 1, 2], samples=3, noise=0.0)
  np.testing.assert_allclose(tunnel, EXPLAINERS[name](model, variables, images, [0, 1, 2]), rtol=1e-5, atol=1e-6)


def test_noise_is_keyed_per_image_not_per_batch_position():
  model, variables, images = _setup()
  batch = explain.noise_tunnel(explain.saliency, model, variables, images, [0, 1, 2], samples=4)
  alone = explain.noise_tunnel(explain.saliency, model, variables, images[2:], [2], samples=4)
  reordered = explain.noise_tunnel(explain.saliency, model, variables, images[::-1], [2, 1, 0], samples=4)
  np.testing.assert_allclose(alone[0], batch[2], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(reordered[::-1], batch, rtol=1e-5, atol=1e-7)
  assert not np.allclose(batch, explain.noise_tunnel(explain.saliency, model, variables, images, [0, 1, 2],
                                                     samples=4, seed=1))


def test_noise_tunnel_kinds_and_chunks():
  model, variables, images = _setup()
  run = functools.partial(explain.noise_tunnel, explain.saliency, model, variables, images, [0, 1, 2], samples=5,
                          noise=0.2)
  mean, mean_sq, variance = (np.asarray(run(kind=kind)) for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"))
  np.testing.assert_allclose(variance, mean_sq - mean ** 2, rtol=1e-4, atol=1e-7)
  assert (variance >= 0).all() and variance.max() > 0
  np.testing.assert_allclose(run(samples_per_call=2), mean, rtol=1e-5, atol=1e-7)  # 2 + 2 + a remainder of 1
  np.testing.assert_allclose(run(samples_per_call=5), mean, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="unknown noise tunnel kind"):
    run(kind="smooth")


def test_smoothgrad_is_the_noise_tunnel_around_saliency():
  model, variables, images = _setup()
  np.testing.assert_allclose(
      explain.smoothgrad(model, variables, images, [0, 1, 2], samples=4, modifier="guided"),
      explain.noise_tunnel(explain.saliency, model, variables, images, [0, 1, 2], samples=4, modifier="guided"),
      rtol=1e-6)


# --- gradient family ----------------------------------------------------------------------------------

def test_input_x_gradient_of_a_linear_model_is_weight_times_input():
  model, variables, images = _setup(model=Linear())
  weights = np.asarray(variables["params"]["predictions"]["kernel"])[:, 1].reshape(images.shape[1:])
  np.testing.assert_allclose(explain.input_x_gradient(model, variables, images, 1), images * weights, rtol=1e-5,
                             atol=1e-6)


def test_integrated_gradients_delta_is_the_completeness_gap_and_chunks_do_not_matter():
  model, variables, images = _setup()
  baseline = 0.3
  attributions, delta = explain.integrated_gradients(model, variables, images, [[0, 1]] * 3, baseline=baseline,
                                                     steps=16, return_delta=True)
  logits = model.apply(variables, jnp.concatenate([images, jnp.full_like(images, baseline)]), train=False)
  gap = logits[:3, :2] - logits[3:, :2]
  np.testing.assert_allclose(delta, attributions.sum(axis=(2, 3, 4)) - gap, rtol=1e-4, atol=1e-5)
  assert np.abs(delta).max() < 0.05 * np.abs(gap).max() + 1e-4
  chunked = explain.integrated_gradients(model, variables, images, [[0, 1]] * 3, baseline=baseline, steps=16,
                                         chunk_size=5)
  np.testing.assert_allclose(chunked, attributions, rtol=1e-5, atol=1e-6)


def test_gradient_shap_of_a_linear_model_is_exact_for_one_baseline():
  """For a linear score every path point has the same gradient w: attributions are w * (x - b), exactly."""
  model, variables, images = _setup(model=Linear())
  baseline = jax.random.normal(jax.random.PRNGKey(5), images.shape[1:])
  shap = explain.gradient_shap(model, variables, images, 2, baselines=baseline, samples=3)
  weights = np.asarray(variables["params"]["predictions"]["kernel"])[:, 2].reshape(images.shape[1:])
  np.testing.assert_allclose(shap, (images - baseline) * weights, rtol=1e-4, atol=1e-5)


def test_gradient_shap_sums_to_the_expected_score_gap_over_the_baselines():
  model, variables, images = _setup()
  baselines = jax.random.normal(jax.random.PRNGKey(6), (4, *images.shape[1:])) * 0.5
  shap = explain.gradient_shap(model, variables, images, 1, baselines=baselines, samples=400)
  logits = model.apply(variables, jnp.concatenate([images, baselines]), train=False)[:, 1]
  expected = logits[:3] - logits[3:].mean()
  np.testing.assert_allclose(shap.sum(axis=(1, 2, 3)), expected, atol=0.1 * float(np.abs(expected).max()))


# --- against captum on the same weights ---------------------------------------------------------------

def _resnet20_and_images(shared_dir):
  peers = pytest.importorskip("peers")
  torch_model, model, variables = peers.resnet20_pair(shared_dir)
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  return peers, torch_model, model, variables, images


def test_integrated_gradients_and_gradient_shap_agree_with_captum(shared_dir):
  captum = pytest.importorskip("captum.attr")
  peers, torch_model, model, variables, images = _resnet20_and_images(shared_dir)
  targets = [3, 1, 7, 0]
  ours = explain.integrated_gradients(model, variables, images, targets, steps=32)
  theirs = captum.IntegratedGradients(torch_model).attribute(peers.nchw(images), target=targets, n_steps=32,
                                                              method="riemann_middle")
  assert peers.correlation(ours, peers.nhwc(theirs)).min() >= 0.99
  baselines = np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype(np.float32) * 0.2
  ours = explain.gradient_shap(model, variables, images, targets, baselines=baselines, samples=600)
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  theirs = captum.GradientShap(torch_model).attribute(peers.nchw(images), peers.nchw(baselines), target=targets,
                                                       n_samples=600)
  # Both are Monte-Carlo estimates of the same expectation with independent draws.
  assert peers.correlation(ours, peers.nhwc(theirs)).min() >= 0.9


def test_smoothgrad_agrees_with_captum_noise_tunnel_without_noise_and_in_expectation(shared_dir):
  captum = pytest.importorskip("captum.attr")
  peers, torch_model, model, variables, images = _resnet20_and_images(shared_dir)
  targets = [3, 1, 7, 0]
  spread = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
  ours = explain.noise_tunnel(explain.saliency, model, variables, images, targets, samples=200, noise=0.1)
  tunnel = captum.NoiseTunnel(captum.Saliency(torch_model))
  theirs = np.concatenate([peers.nhwc(tunnel.attribute(peers.nchw(images[i:i + 1]), target=targets[i],
                                                       nt_type="smoothgrad", nt_samples=200,
                                                       stdevs=float(0.1 * spread[i]), abs=False))
                           for i in range(len(images))])
  assert peers.correlation(ours, theirs).min() >= 0.9
