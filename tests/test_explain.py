"""cnnjax.explain checked against definitions: finite differences, hand-derived rules, CAM, completeness."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import explain
from cnnjax.explain import cam as cam_lib
from cnnjax.models import layers as L
from conftest import one_line_error

KEY = jax.random.PRNGKey(0)


class SmallCNN(nn.Module):
  """Conv-BN-ReLU, Conv, Pool, GAP, Dense: BatchNorm (inference mode) plus the usual Keras layers."""
  num_classes: int = 3
  trace_counter: "TraceCounter" = None  # counts how often the model is traced, i.e. (re)compiled

  @nn.compact
  def __call__(self, x, train=False):
    if self.trace_counter is not None:
      self.trace_counter.count += 1
    x = L.Conv(4, name="conv1")(x)
    x = L.batch_norm(train, name="bn1")(x)
    x = L.Activation("relu", name="relu1")(x)
    x = L.Conv(6, activation="relu", name="conv2")(x)
    x = L.Pool(name="pool")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(self.num_classes, name="predictions")(x)


class TraceCounter:
  count = 0


class CamNet(nn.Module):
  """Conv -> GAP -> Dense: the architecture on which Grad-CAM reduces to CAM (Zhou et al. 2016)."""
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(5, strides=self.strides, activation="relu", name="features")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(3, name="predictions")(x)


class MLP(nn.Module):
  """Flatten -> Dense-ReLU -> Dense-ReLU -> Dense: small enough to backpropagate by hand."""

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(5, activation="relu", name="hidden1")(x)
    x = L.Dense(4, activation="relu", name="hidden2")(x)
    return L.Dense(3, name="predictions")(x)


def _small_cnn(trace_counter=None):
  model = SmallCNN(trace_counter=trace_counter)
  variables = _init(model, jnp.zeros((1, 8, 8, 3)))
  # Non-trivial running statistics, so that using batch statistics instead would show.
  stats = variables["batch_stats"]["bn1"]
  variables = {"params": variables["params"], "batch_stats": {"bn1": {
      "mean": stats["mean"] + jnp.linspace(-0.3, 0.3, 4), "var": stats["var"] * jnp.linspace(0.5, 2, 4)}}}
  return model, variables


def _init(model, images):
  # Jitted: eager initialisation dispatches (and compiles) every small op one at a time.
  return jax.jit(model.init)(KEY, images)


def _images(n=3, size=8, channels=3, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, channels))


# --- saliency and modified backprop -------------------------------------------------------------------

def test_saliency_equals_central_finite_differences():
  model, variables = _small_cnn()
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    images = _images(2).astype(jnp.float64)
    targets = np.array([2, 0])
    gradients = np.asarray(explain.saliency(model, variables, images, targets))
    assert gradients.dtype == np.float64
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    logit = lambda x, b: float(apply(x)[b, targets[b]])
    rng = np.random.default_rng(0)
    step = 1e-6
    for b in range(2):
      for _ in range(12):
        i, j, c = rng.integers(8), rng.integers(8), rng.integers(3)
        delta = jnp.zeros_like(images).at[b, i, j, c].set(step)
        estimate = (logit(images + delta, b) - logit(images - delta, b)) / (2 * step)
        np.testing.assert_allclose(gradients[b, i, j, c], estimate, rtol=1e-5, atol=1e-7)


def _hand_backprop(params, x, target, rule):
  """Backpropagates through MLP by the textbook rule at each ReLU, with explicit numpy masks."""
  w1, b1 = (np.asarray(params["hidden1"][k], np.float64) for k in ("kernel", "bias"))
  w2, b2 = (np.asarray(params["hidden2"][k], np.float64) for k in ("kernel", "bias"))
  w3 = np.asarray(params["predictions"]["kernel"], np.float64)
  x = np.asarray(x, np.float64).reshape(-1)
  z1 = x @ w1 + b1
  z2 = np.maximum(z1, 0) @ w2 + b2

  def through_relu(gradient, z):
    if rule == "plain":
      return gradient * (z > 0)
    if rule == "guided":  # forward input and incoming gradient both positive
      return gradient * (z > 0) * (gradient > 0)
    return gradient * (gradient > 0)  # rectified: only the sign of the incoming gradient matters

  g2 = through_relu(w3[:, target], z2)
  g1 = through_relu(w2 @ g2, z1)
  return w1 @ g1


def test_guided_and_rectified_backprop_follow_the_hand_derived_rules():
  model = MLP()
  images = _images(4, size=2, channels=2, seed=3)
  variables = _init(model, images)
  # Biases push some pre-activations negative, so the three rules disagree.
  params = jax.tree.map(lambda a: a, variables["params"])
  params["hidden1"]["bias"] = jnp.linspace(-0.5, 0.5, 5)
  params["hidden2"]["bias"] = jnp.array([0.3, -0.2, 0.1, -0.4])
  variables = {"params": params}
  targets = np.array([0, 1, 2, 1])
  results = {}
  for modifier, rule in ((None, "plain"), ("guided", "guided"), ("relu", "rectified")):
    gradients = np.asarray(explain.saliency(model, variables, images, targets, modifier=modifier))
    for b in range(4):
      expected = _hand_backprop(params, images[b], targets[b], rule)
      np.testing.assert_allclose(gradients[b].reshape(-1), expected, rtol=1e-5, atol=1e-6)
    results[rule] = gradients
  assert not np.allclose(results["plain"], results["guided"])
  assert not np.allclose(results["guided"], results["rectified"])


class PlainReluCNN(nn.Module):
  """Activations as an imported Linen model writes them: nn.relu, and jax.nn.relu6 inside a jit, which no
  interception of cnnjax's layers can reach; conv3's ReLU is a cnnjax layer's."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
    x = jax.jit(jax.nn.relu6)(nn.Conv(4, (3, 3), name="conv2")(x))
    x = L.Conv(4, activation="relu", name="conv3")(x)
    return nn.Dense(3, name="predictions")(jnp.mean(x, axis=(1, 2)))


def test_modifier_that_cannot_reach_a_models_relus_is_refused_in_one_line():
  model = PlainReluCNN()
  images = _images(2)
  variables = _init(model, images)
  targets = [0, 1]
  fragments = ("modifier='guided'", "PlainReluCNN", "jax.nn.relu and jax.nn.relu6 directly, 2 found",
               "modifier=None")
  one_line_error(lambda: explain.saliency(model, variables, images, targets, modifier="guided"), *fragments)
  one_line_error(lambda: explain.gradcam(model, variables, images, targets, layer="conv3", modifier="guided"),
                  *fragments)
  one_line_error(lambda: explain.guided_gradcam(model, variables, images, targets, layer="conv3"), *fragments)
  one_line_error(lambda: explain.smoothgrad(model, variables, images, targets, samples=2, modifier="relu"),
                  "modifier='relu'", "2 found")


def test_plain_gradients_of_a_model_with_its_own_relus_still_work():
  model = PlainReluCNN()
  images = _images(2)
  variables = _init(model, images)
  targets = np.array([2, 0])
  expected = jax.grad(lambda x: jnp.sum(model.apply(variables, x)[jnp.arange(2), targets]))(images)
  np.testing.assert_allclose(explain.saliency(model, variables, images, targets), expected, rtol=1e-5, atol=1e-7)
  maps = explain.gradcam(model, variables, images, targets, layer="conv2")
  assert maps.shape == (2, 8, 8) and np.isfinite(maps).all()


def test_saliency_map_is_max_abs_over_channels():
  gradients = jnp.array([[[[1.0, -3.0], [0.5, 0.25]]]])
  np.testing.assert_array_equal(explain.saliency_map(gradients), [[[3.0, 0.5]]])


# --- layers -----------------------------------------------------------------------------------------

def test_layer_names_in_forward_order_and_activations_by_name():
  model, variables = _small_cnn()
  assert explain.layer_names(model, (8, 8, 3)) == [
      "conv1", "bn1", "relu1", "conv2", "pool", "gap", "predictions"]
  images = _images(2)
  outputs = explain.activations(model, variables, images, ["conv2", "gap", "predictions"])
  np.testing.assert_allclose(outputs["predictions"], jax.jit(model.apply)(variables, images), atol=1e-6)
  np.testing.assert_allclose(outputs["gap"], outputs["conv2"].reshape(2, 4, 2, 4, 2, 6).max(axis=(2, 4))
                             .mean(axis=(1, 2)), atol=1e-6)
  assert explain.activations(model, variables, images, "relu1")["relu1"].min() >= 0


def test_default_cam_layer_is_last_informative_spatial_map():
  model, variables = _small_cnn()
  images = _images(1)
  default = explain.gradcam(model, variables, images, [1])
  explicit = explain.gradcam(model, variables, images, [1], layer="conv2")
  np.testing.assert_array_equal(default, explicit)


def test_keras21_resnet_aliases():
  from cnnjax.explain.features import _keras21_alias
  assert _keras21_alias("res5c_branch2c") == "conv5_block3_3_conv"
  assert _keras21_alias("bn4f_branch2a") == "conv4_block6_1_bn"
  assert _keras21_alias("res3a_branch1") == "conv3_block1_0_conv"
  assert _keras21_alias("block5_conv3") is None


# --- Grad-CAM ---------------------------------------------------------------------------------------

def _cam(variables, features, target):
  """CAM (Zhou et al. 2016): ReLU(sum_k w_k^c A_k), scaled to [0, 1]."""
  weights = np.asarray(variables["params"]["predictions"]["kernel"])[:, target]
  cam = np.maximum(np.einsum("hwk,k->hw", np.asarray(features), weights), 0)
  return cam / cam.max()


def test_gradcam_equals_cam_on_gap_dense_model():
  model = CamNet()
  images = _images(3)
  variables = _init(model, images)
  targets = np.array([0, 1, 2])
  maps = explain.gradcam(model, variables, images, targets, layer="features")
  features = explain.activations(model, variables, images, ["features"])["features"]
  for b in range(3):
    np.testing.assert_allclose(maps[b], _cam(variables, features[b], targets[b]), rtol=1e-5, atol=1e-6)


def _bilinear_half_pixel(image, size):
  """Bilinear interpolation with half-pixel centres and clamped borders (PyTorch align_corners=False)."""
  def axis_weights(n_in, n_out):
    source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), low] += 1 - (source - low)
    matrix[np.arange(n_out), high] += source - low
    return matrix
  return axis_weights(image.shape[0], size[0]) @ image @ axis_weights(image.shape[1], size[1]).T


def test_gradcam_upsamples_cam_bilinearly_with_half_pixel_centres():
  model = CamNet(strides=(2, 2))
  images = _images(2)
  variables = _init(model, images)
  maps = explain.gradcam(model, variables, images, [1, 2], layer="features")
  features = explain.activations(model, variables, images, "features")["features"]
  assert features.shape[1:3] == (4, 4) and maps.shape == (2, 8, 8)
  for b, target in enumerate([1, 2]):
    expected = _bilinear_half_pixel(_cam(variables, features[b], target), (8, 8))
    np.testing.assert_allclose(maps[b], expected / expected.max(), rtol=1e-5, atol=1e-6)


def test_gradcam_plus_plus_matches_its_closed_form():
  model = CamNet()
  images = _images(2)
  variables = _init(model, images)
  maps = explain.gradcam_plus_plus(model, variables, images, [0, 2], layer="features")
  features = np.asarray(explain.activations(model, variables, images, "features")["features"], np.float64)
  kernel = np.asarray(variables["params"]["predictions"]["kernel"], np.float64)
  for b, target in enumerate([0, 2]):
    a = features[b]
    g = np.broadcast_to(kernel[:, target] / (8 * 8), a.shape)  # d logit / dA for GAP -> Dense
    alpha = g ** 2 / (2 * g ** 2 + a.sum(axis=(0, 1)) * g ** 3)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
    expected = np.maximum(np.einsum("hwk,k->hw", a, weights), 0)
    np.testing.assert_allclose(maps[b], expected / expected.max(), rtol=1e-4, atol=1e-5)


def test_guided_gradcam_is_guided_saliency_times_gradcam():
  model, variables = _small_cnn()
  images, targets = _images(2), np.array([0, 2])
  combined = explain.guided_gradcam(model, variables, images, targets, layer="relu1")
  guided = explain.saliency(model, variables, images, targets, modifier="guided")
  maps = explain.gradcam(model, variables, images, targets, layer="relu1")
  np.testing.assert_allclose(combined, guided * maps[..., None], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["saliency", "guided", "gradcam", "gradcam_plus_plus", "guided_gradcam"])
def test_batch_explained_together_equals_each_alone(method):
  model, variables = _small_cnn()
  images, targets = _images(3), np.array([2, 0, 1])
  explainer = {
      "saliency": explain.saliency,
      "guided": lambda *a: explain.saliency(*a, modifier="guided"),
      "gradcam": lambda *a: explain.gradcam(*a, layer="relu1"),
      "gradcam_plus_plus": explain.gradcam_plus_plus,
      "guided_gradcam": explain.guided_gradcam,
  }[method]
  together = explainer(model, variables, images, targets)
  for b in range(3):
    alone = explainer(model, variables, images[b:b + 1], targets[b:b + 1])
    np.testing.assert_allclose(together[b:b + 1], alone, rtol=1e-5, atol=1e-6)


def test_second_call_with_same_shapes_does_not_retrace():
  counter = TraceCounter()
  model, variables = _small_cnn(counter)
  for explainer in (explain.saliency, explain.gradcam, explain.guided_gradcam):
    explainer(model, variables, _images(2, seed=1), np.array([0, 1]))
    traces = counter.count
    other_variables = jax.tree.map(lambda a: a * 1.5, variables)
    explainer(model, other_variables, _images(2, seed=2), np.array([2, 2]))
    assert counter.count == traces, explainer.__name__
  explain.saliency(model, variables, _images(3), np.array([0, 1, 2]))
  assert counter.count > traces  # a new shape does compile (the counter is live)


@pytest.mark.parametrize("fill", [0.0, 1.0, -2.0])
def test_no_nan_on_constant_images(fill):
  model, variables = _small_cnn()
  images = jnp.full((2, 8, 8, 3), fill)
  for maps in (explain.gradcam(model, variables, images, [0, 1]),
               explain.gradcam_plus_plus(model, variables, images, [0, 1]),
               explain.guided_gradcam(model, variables, images, [0, 1]),
               explain.saliency(model, variables, images, [0, 1], modifier="guided")):
    assert np.isfinite(np.asarray(maps)).all()


def test_all_negative_cam_is_zero_not_nan():
  model = CamNet()
  images = jnp.abs(_images(2)) + 0.1
  variables = _init(model, images)
  params = jax.tree.map(lambda a: a, variables["params"])
  params["features"]["kernel"] = jnp.abs(params["features"]["kernel"])  # positive features ...
  params["predictions"]["kernel"] = -jnp.abs(params["predictions"]["kernel"])  # ... all weighted negatively
  maps = explain.gradcam(model, {"params": params}, images, [0, 1], layer="features")
  np.testing.assert_array_equal(maps, 0.0)


def test_gradcam_is_normalised_to_unit_maximum():
  model, variables = _small_cnn()
  maps = np.asarray(explain.gradcam(model, variables, _images(4, seed=5), [0, 1, 2, 0], layer="relu1"))
  peaks = maps.max(axis=(1, 2))
  assert maps.min() >= 0
  assert np.all((np.abs(peaks - 1) < 1e-6) | (peaks == 0)) and np.any(peaks == 1)


# --- errors -----------------------------------------------------------------------------------------

def test_bad_inputs_give_one_line_errors_listing_choices():
  model, variables = _small_cnn()
  images = _images(2)
  one_line_error(lambda: explain.gradcam(model, variables, images, [0, 1], layer="block5_conv3"),
                  "block5_conv3", "conv1", "relu1", "predictions")
  one_line_error(lambda: explain.gradcam(model, variables, images, [0, 3]), "3", "0..2")
  one_line_error(lambda: explain.saliency(model, variables, images, [-1, 0]), "-1", "0..2")
  one_line_error(lambda: explain.saliency(model, variables, images, [0, 1, 2]), "one class per image")
  one_line_error(lambda: explain.gradcam(model, variables, images, [0, 1], layer="gap"), "conv2")
  one_line_error(lambda: explain.saliency(model, variables, images[0], [0]), "(B, H, W, C)")
  one_line_error(lambda: explain.saliency(model, variables, images.astype(jnp.uint8), [0, 1]), "floating")
  one_line_error(lambda: explain.saliency(model, variables, images, [0, 1], modifier="deconv"), "guided")
  one_line_error(lambda: explain.activations(model, variables, images, ["nope"]), "conv2")


# --- cost: no parameter gradients, no backward below the layer ----------------------------------------

class DeepCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    for i in range(4):
      x = L.Conv(8, activation="relu", name=f"conv{i + 1}")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(10, name="predictions")(x)


def _flops(function, *args):
  analysis = jax.jit(function).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return analysis["flops"]


def test_gradcam_costs_about_one_forward_pass():
  model = DeepCNN()
  images = _images(2, size=12)
  variables = _init(model, images)
  targets = explain.Targets(jnp.array([[0], [1]]))
  forward = _flops(lambda v, x: model.apply(v, x, train=False), variables, images)
  info = explain.features.resolve_layer(model, images.shape[1:], "conv4")
  cam = _flops(lambda v, x, t: cam_lib.class_activation_maps(model, v, x, t, info), variables, images, targets)
  assert cam <= 1.5 * forward, (cam, forward)  # an input-gradient backward below conv4 would double it


def test_gradcam_differentiates_only_the_probe():
  model = DeepCNN()
  images = _images(2, size=8)
  variables = _init(model, images)
  info = explain.features.resolve_layer(model, images.shape[1:], "conv2")
  jaxpr = jax.make_jaxpr(lambda v, x, t: cam_lib.class_activation_maps(model, v, x, t, info))(
      variables, images, explain.Targets(jnp.array([[0], [1]])))
  # Forward: 4 convolutions. Backward from the logits to conv2's output: input-gradients of conv4 and conv3
  # only; a kernel gradient or a backward through conv1/conv2 would add more.
  assert str(jaxpr).count("conv_general_dilated") == 6, jaxpr


# --- localisation: a CNN trained here to find a bright square puts its Grad-CAM mass on the square -------

class SquareDetector(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(8, activation="relu", name="conv1")(x)
    x = L.Conv(8, activation="relu", name="conv2")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(2, name="predictions")(x)


def _square_scenes(rng, n, size=16, square=4):
  """Bars (1 x 5) as distractors everywhere; class 1 also holds a bright square. Returns images, labels,
  and the square's mask."""
  images = np.zeros((n, size, size, 1), np.float32)
  masks = np.zeros((n, size, size), bool)
  labels = rng.integers(0, 2, n)
  for b in range(n):
    for _ in range(3):
      i, j = rng.integers(0, size - 5, 2)
      if rng.random() < 0.5:
        images[b, i, j:j + 5] = 1
      else:
        images[b, i:i + 5, j] = 1
    if labels[b]:
      i, j = rng.integers(0, size - square, 2)
      images[b, i:i + square, j:j + square] = 1
      masks[b, i:i + square, j:j + square] = True
  return images, labels, masks


def test_gradcam_localises_a_learned_square():
  rng = np.random.default_rng(0)
  model = SquareDetector()
  images, labels, _ = _square_scenes(rng, 512)
  variables = _init(model, images[:1])
  optimizer = optax.adam(0.01)
  state = optimizer.init(variables["params"])

  @jax.jit
  def step(params, state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(params, updates), state

  params = variables["params"]
  for epoch in range(30):
    for start in range(0, 512, 64):
      params, state = step(params, state, images[start:start + 64], labels[start:start + 64])
  test_images, test_labels, masks = _square_scenes(rng, 64)
  logits = jax.jit(model.apply)({"params": params}, test_images)
  assert (np.argmax(logits, -1) == test_labels).mean() > 0.9
  positives = test_labels == 1
  maps = np.asarray(explain.gradcam(model, {"params": params}, test_images[positives],
                                    np.ones(positives.sum(), int)))
  grown = np.asarray(jax.lax.reduce_window(masks[positives].astype(np.float32), 0.0, jax.lax.max,
                                           (1, 3, 3), (1, 1, 1), "SAME")) > 0  # square plus a 1-pixel rim
  mass_on_square = (maps * grown).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
  assert np.median(mass_on_square) > 0.5, mass_on_square


# --- SmoothGrad and Integrated Gradients ----------------------------------------------------------

class SmoothCNN(nn.Module):
  """tanh everywhere: smooth, so the midpoint rule converges fast and completeness can be tight."""

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(4, activation="tanh", name="conv1")(x)
    x = L.Conv(4, strides=(2, 2), activation="tanh", name="conv2")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Dense(3, name="predictions")(x)


class Cubic(nn.Module):
  """logits (sum x^3, -sum x^3): the gradient 3x^2 has noise mean 3x^2 + 3 sigma^2 exactly."""

  @nn.compact
  def __call__(self, x, train=False):
    total = jnp.sum(x ** 3, axis=(1, 2, 3))
    return jnp.stack([total, -total], axis=-1)


@pytest.mark.parametrize("model_class, steps, tolerance", [(SmoothCNN, 16, 1e-3), (SmallCNN, 64, 2e-2)])
def test_integrated_gradients_completeness(model_class, steps, tolerance):
  images = _images(3)
  if model_class is SmallCNN:
    model, variables = _small_cnn()
  else:
    model = model_class()
    variables = _init(model, images)
  targets = np.array([0, 2, 1])
  baseline = jnp.full(images.shape[1:], 0.25)
  attributions = explain.integrated_gradients(model, variables, images, targets, baseline=baseline,
                                              steps=steps)
  apply = jax.jit(model.apply)
  rows = np.arange(3)
  gap = (np.asarray(apply(variables, images))[rows, targets]
         - np.asarray(apply(variables, jnp.broadcast_to(baseline, images.shape)))[rows, targets])
  sums = np.asarray(attributions).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(sums, gap, rtol=tolerance, atol=tolerance * np.abs(gap).max())


def test_one_step_integrated_gradients_is_input_times_midpoint_gradient():
  model = SmoothCNN()
  images = _images(2)
  variables = _init(model, images)
  one_step = explain.integrated_gradients(model, variables, images, [1, 2], steps=1)
  midpoint_gradient = explain.saliency(model, variables, images / 2, [1, 2])
  np.testing.assert_allclose(one_step, images * midpoint_gradient, rtol=1e-5, atol=1e-6)


def test_smoothgrad_noise_is_zero_mean_with_the_requested_spread():
  model = Cubic()
  images = _images(2)
  variables = {}
  noise, samples = 0.1, 400
  smooth = explain.smoothgrad(model, variables, images, [0, 0], samples=samples, noise=noise)
  plain = explain.saliency(model, variables, images, [0, 0])
  sigma = noise * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
  excess = np.asarray(smooth - plain).mean(axis=(1, 2, 3))  # E[3(x+e)^2] - 3x^2 = 3 sigma^2
  np.testing.assert_allclose(excess, 3 * sigma ** 2, rtol=0.05)
  np.testing.assert_allclose(explain.smoothgrad(model, variables, images, [1, 1], samples=samples, noise=0.0),
                             -plain,
                             rtol=1e-6)


def test_smoothgrad_is_reproducible_and_seeded():
  model, variables = _small_cnn()
  images = _images(2)
  first = explain.smoothgrad(model, variables, images, [0, 1], samples=4, seed=3)
  again = explain.smoothgrad(model, variables, images, [0, 1], samples=4, seed=3)
  other = explain.smoothgrad(model, variables, images, [0, 1], samples=4, seed=4)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


# --- the model zoo ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, size, check_guided", [
    ("simple_cnn_bn", 16, True),  # BatchNorm, Flatten head
    ("resnet20", 8, False),  # residual, BatchNorm, global pooling, stand-alone Activation layers
])
def test_explainers_run_on_zoo_models(name, size, check_guided):
  models = pytest.importorskip("cnnjax.models")
  model = models.create(name, num_classes=4)
  images = _images(2, size=size)
  variables = _init(model, images)
  targets = np.array([3, 1])
  maps = np.asarray(explain.gradcam(model, variables, images, targets))
  assert maps.shape == (2, size, size) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
  if check_guided:  # compiling these for every model is slow; one suffices
    plain = np.asarray(explain.saliency(model, variables, images, targets))
    guided = np.asarray(explain.saliency(model, variables, images, targets, modifier="guided"))
    assert np.isfinite(guided).all() and np.abs(guided).sum() > 0
    # Every ReLU goes through the switchable activation (random nets' gradients are tiny: compare relatively).
    assert np.abs(plain - guided).max() > 1e-2 * np.abs(plain).max()


def test_default_cam_layers_of_zoo_models():
  models = pytest.importorskip("cnnjax.models")
  for name, size, expected in (("vgg16", 32, "block5_conv3"), ("resnet50", 32, "conv5_block3_out"),
                               ("mobilenet", 32, "conv_pw_13_relu")):
    infos = explain.features.layer_infos(models.create(name, num_classes=10), (size, size, 3))
    assert explain.features.default_cam_layer(infos).name == expected
  resnet = models.create("resnet50", num_classes=10)
  info = explain.features.resolve_layer(resnet, (32, 32, 3), "res5c_branch2c")
  assert info.name == "conv5_block3_3_conv"


# --- activation maximization ------------------------------------------------------------------------

class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return L.Dense(3, name="predictions")(L.Flatten(name="flatten")(x))


def test_maximized_class_input_of_a_linear_model_aligns_with_its_weights():
  # argmax_x w.x - l2 * mean(x^2) is x = w * N / (2 l2): the ascent must end up parallel to w.
  model = Linear()
  variables = _init(model, jnp.zeros((1, 4, 4, 2)))
  images = explain.maximize_activation(model, variables, [2, 0], input_shape=(4, 4, 2), steps=150,
                                       **{**explain.KERAS_VIS, "l2": 1.0, "tv": 0.0})
  kernel = np.asarray(variables["params"]["predictions"]["kernel"])
  for image, target in zip(np.asarray(images), [2, 0]):
    cosine = image.ravel() @ kernel[:, target] / np.linalg.norm(image) / np.linalg.norm(kernel[:, target])
    assert cosine > 0.99, cosine


def test_maximize_filters_and_joint_classes_raise_their_objectives_without_retracing():
  counter = TraceCounter()
  model, variables = _small_cnn(counter)
  apply = jax.jit(lambda x: model.apply(variables, x, train=False))
  noise = 0.1 * jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3))  # the ascent's starting point
  start = np.asarray(apply(noise))[0]
  ascended = explain.maximize_activation(model, variables, [[0, 1], 2], input_shape=(8, 8, 3), steps=60,
                                         lr=0.1, jitter=1, blur=0.5, **explain.KERAS_VIS)
  logits = np.asarray(apply(ascended))
  assert np.all(logits[0, :2] > start[:2] + 0.3) and logits[1, 2] > start[2] + 0.3, (logits, start)
  traces = counter.count
  explain.maximize_activation(model, variables, [[2, 1], 0], input_shape=(8, 8, 3), steps=60, lr=0.1,
                              jitter=1, blur=0.5, seed=1, **explain.KERAS_VIS)
  assert counter.count == traces
  chosen = explain.maximize_activation(model, variables, layer="conv2", filters=[3, 5], input_shape=(8, 8, 3),
                                       steps=60, **explain.KERAS_VIS)
  channel_means = lambda x: explain.activations(model, variables, x, "conv2")["conv2"].mean(axis=(1, 2))
  gained = np.asarray(channel_means(chosen)) - np.asarray(channel_means(jnp.tile(noise, (2, 1, 1, 1))))
  assert gained[0, 3] > 0.5 and gained[1, 5] > 0.5


def test_maximize_rejects_bad_units():
  model, variables = _small_cnn()
  one_line_error(lambda: explain.maximize_activation(model, variables, [3], input_shape=(8, 8, 3),
                                                      preprocess="rescale"), "0..2")
  one_line_error(lambda: explain.maximize_activation(model, variables, layer="conv2", filters=[6],
                                                      input_shape=(8, 8, 3), preprocess="rescale"), "0..5")
  one_line_error(lambda: explain.maximize_activation(model, variables, [0], layer="conv2",
                                                      input_shape=(8, 8, 3), preprocess="rescale"), "filters")


# --- faithfulness metrics ---------------------------------------------------------------------------

def test_deletion_insertion_curves_follow_the_map_order_exactly():
  # One row of four pixels; class 0's logit weighs them 4, 3, 2, 1 and class 1's is 0.
  model = Linear()
  variables = _init(model, jnp.zeros((1, 1, 4, 1)))
  kernel = np.zeros((4, 3), np.float32)
  kernel[:, 0] = [4, 3, 2, 1]
  bias = jnp.array([0.0, 0.0, -100.0])  # class 2 out of the way: softmax(z, 0, -100) = sigmoid(z)
  variables = {"params": {"predictions": {"kernel": jnp.asarray(kernel), "bias": bias}}}
  images = jnp.ones((2, 1, 4, 1))
  maps = jnp.array([[[4.0, 3, 2, 1]], [[1.0, 2, 3, 4]]])  # the true order, and its reverse
  result = explain.deletion_insertion(model, variables, images, [0, 0], maps, steps=4, blur_sigma=1.0)
  sigmoid = lambda z: 1 / (1 + np.exp(-np.asarray(z, np.float64)))
  expected_deletion = [sigmoid([10, 6, 3, 1, 0]), sigmoid([10, 9, 7, 4, 0])]
  np.testing.assert_allclose(result["deletion_curve"], expected_deletion, rtol=1e-5)
  trapezoid = [(curve.sum() - (curve[0] + curve[-1]) / 2) / 4 for curve in expected_deletion]
  np.testing.assert_allclose(result["deletion"], trapezoid, rtol=1e-5)
  assert result["deletion"][0] < result["deletion"][1]
  assert result["insertion"][0] > result["insertion"][1]
  np.testing.assert_allclose(result["insertion_curve"][:, -1], sigmoid(10), rtol=1e-5)
  blurred = explain.deletion_insertion(model, variables, images, [0, 0], maps, steps=4, blur_sigma=1.0,
                                       substrate="blur")
  # Deleting every pixel into the blurred copy is where insertion starts.
  np.testing.assert_allclose(blurred["deletion_curve"][:, -1], blurred["insertion_curve"][:, 0], rtol=1e-6)
  np.testing.assert_allclose(blurred["insertion_curve"], result["insertion_curve"], rtol=1e-6)


def test_randomization_check_cascades_from_the_top():
  model, variables = _small_cnn()
  images, targets = _images(2), np.array([0, 2])
  same = explain.randomization_check(model, {**variables, "params": _init(model, images[:1])["params"]},
                                     images, targets, method="saliency", seed=0)
  assert [entry["layer"] for entry in same] == ["predictions", "conv2", "bn1", "conv1"]
  for entry in same:  # re-initialising with the very parameters in use changes nothing
    np.testing.assert_allclose(entry["spearman"], 1.0, atol=1e-6)
  trained = {**variables, "params": jax.tree.map(lambda a: a + 0.3, variables["params"])}
  randomized = explain.randomization_check(model, trained, images, targets, method="gradcam", seed=5)
  assert len(randomized) == 4 and np.mean(randomized[-1]["spearman"]) < 0.9
  assert all(np.all(np.abs(entry["spearman"]) <= 1) for entry in randomized)


def test_tiny_but_nonzero_maps_are_still_normalised():
  model = CamNet()
  images = _images(2)
  variables = _init(model, images)
  params = jax.tree.map(lambda a: a, variables["params"])
  params["predictions"]["kernel"] = params["predictions"]["kernel"] * 1e-15  # gradients of order 1e-16
  maps = np.asarray(explain.gradcam(model, {"params": params}, images, [0, 1], layer="features"))
  np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, rtol=1e-6)
