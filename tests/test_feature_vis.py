"""Feature visualization (#17): parameterizations, transforms and objectives checked against their definitions, and
maximize_activation's batching, preprocessing and errors, on tiny models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import data, explain
from cnnjax.explain import maximize, objectives
from cnnjax.explain import parameterization as P
from cnnjax.explain import transforms as T
from cnnjax.models import layers as L
from conftest import one_line_error

KEY = jax.random.PRNGKey(0)


class Tiny(nn.Module):
  """Conv (named 'conv', ReLU) -> GAP -> Dense: layer outputs and logits small enough to check by hand."""
  trace_counter: "TraceCounter" = None

  @nn.compact
  def __call__(self, x, train=False):
    if self.trace_counter is not None:
      self.trace_counter.count += 1
    x = L.Conv(4, activation="relu", name="conv")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(3, name="predictions")(x)


class TraceCounter:
  count = 0


@pytest.fixture(scope="module")
def tiny():
  model = Tiny()
  return model, jax.jit(model.init)(KEY, jnp.zeros((1, 8, 8, 3)))


# --- parameterizations -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_fft_image_round_trips(size):
  images = jax.random.normal(KEY, (2, *size, 3))
  spectrum = P.fft_spectrum(images)
  assert spectrum.shape == P.spectrum_shape(images.shape)
  np.testing.assert_allclose(P.fft_image(spectrum, *size), images, atol=1e-5)
  np.testing.assert_allclose(P.fft_spectrum(P.fft_image(spectrum, *size)), spectrum, atol=1e-5)


def test_fft_scaling_is_one_over_frequency():
  scale = P.spectrum_scale(16, 16)
  assert scale[0, 0] == pytest.approx(16)  # DC treated as 1 / max(h, w) cycles per pixel
  assert scale[0, 4] == pytest.approx(4)  # 4 / 16 cycles per pixel
  assert scale[8, 8] == pytest.approx(1 / np.sqrt(0.5 ** 2 + 0.5 ** 2))
  # A white spectrum becomes an image whose power falls with frequency: neighbours correlate.
  image = np.asarray(P.fft_image(jax.random.normal(KEY, P.spectrum_shape((1, 64, 64, 1))), 64, 64))[0, ..., 0]
  assert np.corrcoef(image[:, :-1].ravel(), image[:, 1:].ravel())[0, 1] > 0.5


def test_decorrelation_whitens_the_given_covariance():
  rng = np.random.default_rng(0)
  mixing = rng.normal(size=(3, 3))
  covariance = mixing @ mixing.T + 0.1 * np.eye(3)
  sqrt = P.colour_sqrt(covariance)
  np.testing.assert_allclose(sqrt @ sqrt.T, covariance, rtol=1e-5, atol=1e-6)
  colours = rng.multivariate_normal(np.zeros(3), covariance, size=200_000)
  white = colours @ np.linalg.inv(sqrt).T
  np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(3), atol=0.02)
  # decorrelate maps white colours to the covariance, up to the normalisation by the largest column norm.
  mapped = np.asarray(P.decorrelate(jnp.asarray(rng.normal(size=(200_000, 3)), jnp.float32), sqrt))
  largest = np.max(np.linalg.norm(sqrt, axis=0))
  np.testing.assert_allclose(np.cov(mapped, rowvar=False) * largest ** 2, covariance, rtol=0.03, atol=0.03)
  # lucid's ImageNet matrix is the square root of its own covariance, and colour_covariance estimates one.
  imagenet = P.IMAGENET_COLOUR_SQRT.astype(np.float64)
  np.testing.assert_allclose(P.colour_sqrt(imagenet @ imagenet.T) @ P.colour_sqrt(imagenet @ imagenet.T).T,
                             imagenet @ imagenet.T, atol=1e-6)
  pixels = np.clip(rng.multivariate_normal([128] * 3, covariance * 100, size=(50, 20, 20)), 0, 255)
  np.testing.assert_allclose(P.colour_covariance(pixels), np.cov(pixels.reshape(-1, 3) / 255, rowvar=False),
                             rtol=1e-5)


def test_squashes_map_to_the_unit_interval():
  values = jnp.linspace(-20, 20, 41)
  for how in P.SQUASHES:
    squashed = np.asarray(P.squash(values, how))
    assert squashed.min() >= 0 and squashed.max() <= 1 and np.all(np.diff(squashed) >= 0)
    assert float(P.squash(jnp.zeros(()), how)) == pytest.approx(0.5)


@pytest.mark.parametrize("mode", P.PREPROCESS_MODES)
def test_preprocess_modes_match_cnnjax_data(mode):
  pixels = jax.random.uniform(KEY, (2, 4, 4, 3))
  np.testing.assert_allclose(P.to_model_input(pixels, mode), data.preprocess(pixels * 255, mode), rtol=1e-5,
                             atol=1e-4)
  callable_mode = lambda images: data.preprocess(images, "mean_std", mean=[0.5] * 3, std=[0.25] * 3)
  np.testing.assert_allclose(P.to_model_input(pixels, callable_mode), (pixels - 0.5) / 0.25, atol=1e-5)


# --- transforms --------------------------------------------------------------------------------------

def test_each_transform_is_the_identity_at_zero_strength():
  image = jax.random.uniform(KEY, (9, 11, 3))
  zero = (T.Pad(0), T.Jitter(0), T.RandomScale((1.0,)), T.RandomRotate((0.0,)))
  for transform in zero:
    np.testing.assert_allclose(transform(jax.random.PRNGKey(3), image), image, atol=1e-6, err_msg=str(transform))
  np.testing.assert_allclose(T.compose(zero, jax.random.PRNGKey(3), image), image, atol=1e-6)


def test_transforms_at_nonzero_strength_do_what_they_say():
  image = jax.random.uniform(KEY, (8, 8, 3))
  padded = np.asarray(T.Pad(2, value=0.5)(None, image))
  assert padded.shape == (12, 12, 3) and np.all(padded[:2] == 0.5) and np.array_equal(padded[2:-2, 2:-2], image)
  crops = [np.asarray(T.Jitter(2)(jax.random.PRNGKey(k), padded)) for k in range(20)]
  assert all(c.shape == (10, 10, 3) for c in crops)
  assert len({c.tobytes() for c in crops}) > 1  # the offset is random
  for crop in crops:  # each crop is a window of the padded image
    assert any(np.array_equal(crop, padded[r:r + 10, c:c + 10]) for r in range(3) for c in range(3))
  rotated = T.RandomRotate((90.0,))(KEY, image)  # a square image turned a quarter: exactly a rot90
  assert any(np.allclose(rotated, np.rot90(image, k)) for k in (1, 3))
  zoomed = np.asarray(T.RandomScale((2.0,))(KEY, jnp.tile(jnp.arange(8.0)[None, :, None], (8, 1, 1))))
  np.testing.assert_allclose(np.diff(zoomed[4, 2:6, 0]), 0.5, atol=1e-5)  # a ramp zoomed 2x rises half as fast


def test_standard_and_lucid_transforms_scale_with_the_image():
  at_224, at_32 = T.lucid_transforms(224), T.lucid_transforms(32)
  assert at_224[0] == T.Pad(12) and at_224[1] == T.Jitter(8) and at_224[-1] == T.Jitter(4)  # lucid's numbers
  assert at_32[0] == T.Pad(2) and at_32[1] == T.Jitter(1)
  assert min(at_224[2].scales) == pytest.approx(0.9) and max(at_224[3].degrees) == 10
  standard = T.standard_transforms(32)
  assert standard[0] == T.Pad(6) and standard[1] == T.Jitter(6) and standard[-1] == T.Jitter(3)
  assert min(standard[2].scales) == pytest.approx(0.7) and max(standard[3].degrees) == 30
  assert hash(standard) == hash(T.standard_transforms(32))  # static under jit: equal transforms reuse the compile


# --- objectives --------------------------------------------------------------------------------------

def _outputs(tiny, images):
  model, variables = tiny
  logits = np.asarray(model.apply(variables, images))
  conv = np.asarray(explain.activations(model, variables, images, "conv")["conv"])
  return logits, {"conv": jnp.asarray(conv)}, conv


def test_objectives_match_hand_computed_values(tiny):
  images = jax.random.normal(KEY, (3, 8, 8, 3))
  logits, layers, conv = _outputs(tiny, images)
  score = lambda objective: np.asarray(objectives.resolve(objective, 3, {"conv": conv.shape})(jnp.asarray(logits),
                                                                                              layers))
  np.testing.assert_allclose(score(objectives.class_logit([2, 0, 1])), logits[[0, 1, 2], [2, 0, 1]], rtol=1e-6)
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(score(objectives.class_probability(1)), probabilities[:, 1], rtol=1e-5)
  np.testing.assert_allclose(score(objectives.class_probability(1, log=True)), np.log(probabilities[:, 1]),
                             rtol=1e-5)
  np.testing.assert_allclose(score(objectives.channel("conv", [3, 1, 0])),
                             conv[[0, 1, 2], :, :, [3, 1, 0]].mean((1, 2)), rtol=1e-5)
  np.testing.assert_allclose(score(objectives.neuron("conv", 2)), conv[:, 4, 4, 2], rtol=1e-6)  # 8x8: the centre
  np.testing.assert_allclose(score(objectives.neuron("conv", 2, row=1, col=6)), conv[:, 1, 6, 2], rtol=1e-6)
  vector = np.asarray([1.0, -2.0, 0.5, 3.0], np.float32)
  dots = conv @ vector
  np.testing.assert_allclose(score(objectives.direction("conv", vector)), dots.mean((1, 2)), rtol=1e-5)
  cosines = dots / (1e-4 + np.linalg.norm(conv, axis=-1)) / (1e-4 + np.linalg.norm(vector))
  np.testing.assert_allclose(score(objectives.direction("conv", vector, cossim_pow=2)),
                             (dots * np.maximum(0.1, cosines) ** 2).mean((1, 2)), rtol=1e-4)
  grams = np.einsum("bpc,bpd->bcd", conv.reshape(3, -1, 4), conv.reshape(3, -1, 4)).reshape(3, -1)
  grams /= np.linalg.norm(grams, axis=1, keepdims=True)
  similarity = grams @ grams.T
  np.testing.assert_allclose(score(objectives.diversity("conv")), (similarity.sum(1) - 1) / 3, rtol=1e-5)
  combined = objectives.class_logit(0) - 2 * objectives.channel("conv", 1) + 1.5
  np.testing.assert_allclose(score(combined), logits[:, 0] - 2 * conv[..., 1].mean((1, 2)) + 1.5, rtol=1e-5)
  np.testing.assert_allclose(score(-objectives.class_logit(0)), -logits[:, 0], rtol=1e-6)
  assert combined.layers == ("conv",)


def test_objective_errors_are_one_line(tiny):
  model, variables = tiny
  run = lambda objective, **options: maximize.maximize_activation(model, variables, objective=objective,
                                                                  input_shape=(8, 8, 3), preprocess="rescale",
                                                                  steps=1, **options)
  one_line_error(lambda: run(objectives.class_logit(3)), "0..2")
  one_line_error(lambda: run(objectives.channel("conv", 4)), "0..3", "conv")
  one_line_error(lambda: run(objectives.channel("nope", 0)), "unknown layer")
  one_line_error(lambda: run(objectives.neuron("conv", 0, row=8)), "outside")
  one_line_error(lambda: run(objectives.direction("conv", np.ones(5))), "4 channels")
  one_line_error(lambda: run(objectives.class_logit([0, 1]) + objectives.channel("conv", [0, 1, 2])), "different")
  one_line_error(lambda: run(objectives.class_logit([0, 1]), batch=3), "batch=3")
  one_line_error(lambda: objectives.class_logit(-1), ">= 0")
  one_line_error(lambda: objectives.class_logit(0) * objectives.class_logit(1), "scaled by a number")


# --- maximize_activation -----------------------------------------------------------------------------

def test_default_recipe_raises_the_objective_and_returns_model_inputs(tiny):
  model, variables = tiny
  start = np.asarray(model.apply(variables, jnp.zeros((1, 8, 8, 3))))[0]  # grey 0.5 in 'tf' is 0
  images = maximize.maximize_activation(model, variables, [0, 2], input_shape=(8, 8, 3), preprocess="tf", steps=40,
                                        transforms=(T.Jitter(1),), lr=0.1)
  assert images.shape == (2, 8, 8, 3) and float(images.min()) >= -1 and float(images.max()) <= 1
  logits = np.asarray(model.apply(variables, images))
  assert logits[0, 0] > start[0] + 0.1 and logits[1, 2] > start[2] + 0.1, (logits, start)


def test_batched_call_equals_separate_calls(tiny):
  model, variables = tiny
  # Random jitter and rotation every step: each image's draws must follow it out of the batch.
  options = dict(input_shape=(8, 8, 3), preprocess="rescale", steps=8,
                 transforms=(T.Jitter(1), T.RandomRotate((-5.0, 0.0, 5.0))))
  both = maximize.maximize_activation(model, variables, [1, 2], **options)
  for row, target in enumerate([1, 2]):
    alone = maximize.maximize_activation(model, variables, [target], **options)
    np.testing.assert_allclose(both[row], alone[0], atol=1e-5)


def test_new_indices_do_not_recompile_and_a_diversity_batch_differs():
  counter = TraceCounter()
  model = Tiny(trace_counter=counter)
  variables = jax.jit(model.init)(KEY, jnp.zeros((1, 8, 8, 3)))
  options = dict(input_shape=(8, 8, 3), preprocess="rescale", steps=3)
  maximize.maximize_activation(model, variables, objective=objectives.channel("conv", [0, 1]), **options)
  traces = counter.count
  maximize.maximize_activation(model, variables, objective=objectives.channel("conv", [2, 3]), **options)
  assert counter.count == traces
  same = maximize.maximize_activation(model, variables, objective=objectives.channel("conv", 1) -
                                      0.5 * objectives.diversity("conv"), batch=3, **options)
  assert not np.allclose(same[0], same[1]) and not np.allclose(same[1], same[2])  # each starts from its own noise


@pytest.mark.parametrize("recipe", [dict(param="pixels"), dict(colour=None, squash="tanh"),
                                    dict(colour=np.diag([0.04, 0.02, 0.01]))])
def test_every_parameterization_raises_the_class_logit(tiny, recipe):
  model, variables = tiny
  start = np.asarray(model.apply(variables, jnp.full((1, 8, 8, 3), 0.5)))[0]
  images = maximize.maximize_activation(model, variables, [1], input_shape=(8, 8, 3), preprocess="rescale",
                                        steps=30, lr=0.1, transforms=(), **recipe)
  assert float(images.min()) >= 0 and float(images.max()) <= 1  # 'rescale' keeps [0, 1] pixels
  assert np.asarray(model.apply(variables, images))[0, 1] > start[1] + 0.05


def test_recipe_errors_are_one_line(tiny):
  model, variables = tiny
  run = lambda **options: maximize.maximize_activation(model, variables, [0], input_shape=(8, 8, 3), steps=1,
                                                       **{"preprocess": "rescale", **options})
  one_line_error(lambda: run(preprocess=None), "preprocess=", "KERAS_VIS")
  one_line_error(lambda: run(preprocess="bgr"), "unknown preprocess")
  one_line_error(lambda: run(param="wavelet"), "unknown param")
  one_line_error(lambda: run(squash="relu"), "unknown squash")
  one_line_error(lambda: run(colour="sRGB"), "unknown colour")
  one_line_error(lambda: run(colour=np.eye(2)), "3 channels")
  one_line_error(lambda: run(colour=-np.eye(3)), "positive semi-definite")
  one_line_error(lambda: run(blur=1.0), "param='pixels'")
  one_line_error(lambda: run(transforms="random"), "unknown transforms")
  one_line_error(lambda: run(transforms=(T.Pad(-1),)), "Pad")
  one_line_error(lambda: run(transforms=(len,)), "frozen dataclasses")
  one_line_error(lambda: run(objective=objectives.class_logit(0)), "not both")


def test_gallery_and_channel_grid_draw_every_tile(tmp_path):
  from cnnjax import viz
  pixels = np.asarray(jax.random.uniform(KEY, (3, 8, 8, 3)))
  figure = viz.class_gallery(pixels, ["a", "b", "c"], cols=2, path=tmp_path / "gallery.png")
  assert (tmp_path / "gallery.png").stat().st_size > 500
  assert [axis.get_title() for axis in figure.axes if axis.images] == ["a", "b", "c"]
  np.testing.assert_allclose(figure.axes[0].images[0].get_array(), pixels[0])  # [0, 1] pixels drawn as they are
  grid = viz.channel_grid(pixels * 4 - 2, "conv", [5, 6, 7])  # model inputs: stretched per image
  assert [axis.get_title() for axis in grid.axes if axis.images] == ["5", "6", "7"]
  assert float(np.max(grid.axes[0].images[0].get_array())) == pytest.approx(1.0)
  one_line_error(lambda: viz.class_gallery(pixels, ["a"]), "N names")


def test_from_model_input_inverts_every_mode():
  pixels = jax.random.uniform(KEY, (2, 4, 4, 3))
  for mode in P.PREPROCESS_MODES:
    np.testing.assert_allclose(P.from_model_input(P.to_model_input(pixels, mode), mode), pixels, atol=1e-5)
  one_line_error(lambda: P.from_model_input(pixels, "mean_std"), "invert")
