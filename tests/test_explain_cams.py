"""The CAM family (cnnjax.explain.cam) against its definitions on heads where the maps can be derived by hand, and
against pytorch-grad-cam on the same weights (the shipped CIFAR resnet20 on real images, a random-weight
torchvision ResNet50)."""
import io
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import explain
from cnnjax.explain import cam
from cnnjax.models import layers as L
from conftest import one_line_error

KEY = jax.random.PRNGKey(0)

# Every CAM that returns maps, by its pytorch-grad-cam class name.
CAMS = {"GradCAM": cam.gradcam, "GradCAMPlusPlus": cam.gradcam_plus_plus, "XGradCAM": cam.xgradcam,
        "LayerCAM": cam.layercam, "HiResCAM": cam.hirescam, "ScoreCAM": cam.scorecam,
        "AblationCAM": cam.ablationcam, "EigenCAM": cam.eigencam}


class CamNet(nn.Module):
  """Conv -> GAP -> Dense: every CAM has a closed form at `features` (the gradient there is w_c / (h w))."""
  strides: tuple = (1, 1)
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(5, strides=self.strides, activation=self.activation, name="features")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(3, name="predictions")(x)


class TwoConvNet(nn.Module):
  """Two convolutions below the head, so gradients at `conv1` vary over space."""

  @nn.compact
  def __call__(self, x, train=False):
    x = L.Conv(4, activation="relu", name="conv1")(x)
    x = L.Conv(6, strides=(2, 2), activation="relu", name="conv2")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(3, name="predictions")(x)


class DeepCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    for i in range(4):
      x = L.Conv(8, activation="relu", name=f"conv{i + 1}")(x)
    x = L.GlobalAveragePool(name="gap")(x)
    return L.Dense(10, name="predictions")(x)


def _images(n=3, size=8, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3))


def _setup(model, images):
  return model, jax.jit(model.init)(KEY, images), images


def _features(model, variables, images, layer="features"):
  return np.asarray(explain.activations(model, variables, images, layer)[layer], np.float64)


def _head(variables):
  return np.asarray(variables["params"]["predictions"]["kernel"], np.float64)


def _normalised(maps):
  maps = np.maximum(maps, 0)
  return maps / maps.max(axis=(-2, -1), keepdims=True)


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


def _bilinear_aligned(image, size):
  """Bilinear interpolation through the corner pixels' centres (torch.nn.UpsamplingBilinear2d), by np.interp."""
  rows = np.linspace(0, image.shape[0] - 1, size[0])
  columns = np.linspace(0, image.shape[1] - 1, size[1])
  by_row = np.stack([np.interp(rows, np.arange(image.shape[0]), image[:, j]) for j in range(image.shape[1])], 1)
  return np.stack([np.interp(columns, np.arange(image.shape[1]), row) for row in by_row])


def _weighted_cam(features, weights):
  """ReLU(sum_c weights_c A_c) scaled to [0, 1], for one image's (h, w, c) features."""
  return _normalised(np.einsum("hwc,c->hw", features, weights))


# --- definitions on a GAP + dense head --------------------------------------------------------------

def test_gradient_cams_reduce_to_cam_on_a_gap_dense_head():
  model, variables, images = _setup(CamNet(), _images(3))
  targets = np.array([0, 1, 2])
  features, kernel = _features(model, variables, images), _head(variables)
  assert features.min() >= 0
  maps = {name: np.asarray(CAMS[name](model, variables, images, targets, layer="features"))
          for name in ("GradCAM", "HiResCAM", "XGradCAM", "LayerCAM")}
  for b, target in enumerate(targets):
    cam_map = _weighted_cam(features[b], kernel[:, target])
    # The gradient w_c / (h w) is the same at every position: HiResCAM's elementwise product sums to Grad-CAM's,
    # and with A >= 0 XGrad-CAM's sum_ij g A / sum_ij A is that same gradient.
    for name in ("GradCAM", "HiResCAM", "XGradCAM"):
      np.testing.assert_allclose(maps[name][b], cam_map, rtol=1e-5, atol=1e-6, err_msg=name)
    # LayerCAM keeps only the positive gradients: CAM with the negative class weights dropped.
    np.testing.assert_allclose(maps["LayerCAM"][b], _weighted_cam(features[b], np.maximum(kernel[:, target], 0)),
                               rtol=1e-5, atol=1e-6)
  assert not np.allclose(maps["LayerCAM"], maps["GradCAM"], atol=1e-3)


def test_ablationcam_weights_are_the_relative_score_drops():
  model, variables, images = _setup(CamNet(), _images(3))
  targets = np.array([2, 0, 1])
  features, kernel = _features(model, variables, images), _head(variables)
  logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
  assert np.all(features.min(axis=(1, 2, 3)) == 0)  # post-ReLU: pytorch-grad-cam ablates a channel to 0
  maps = np.asarray(cam.ablationcam(model, variables, images, targets, layer="features"))
  for b, target in enumerate(targets):
    # Zeroing channel c lowers the logit by w_c * mean(A_c); the weight is that drop over the original logit.
    drops = kernel[:, target] * features[b].mean(axis=(0, 1))
    np.testing.assert_allclose(maps[b], _weighted_cam(features[b], drops / logits[b, target]), rtol=1e-4,
                               atol=1e-5)


def test_ablationcam_fills_a_layer_with_negative_values_far_below_its_minimum():
  model, variables, images = _setup(CamNet(activation="linear"), _images(2))
  targets = np.array([1, 2])
  features, kernel = _features(model, variables, images), _head(variables)
  logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
  maps = np.asarray(cam.ablationcam(model, variables, images, targets, layer="features"))
  for b, target in enumerate(targets):
    fill = features[b].min() - 1e7
    drops = kernel[:, target] * (features[b].mean(axis=(0, 1)) - fill)
    np.testing.assert_allclose(maps[b], _weighted_cam(features[b], drops / logits[b, target]), rtol=1e-4,
                               atol=1e-5)
    zeroed = _weighted_cam(features[b], kernel[:, target] * features[b].mean(axis=(0, 1)) / logits[b, target])
    assert np.abs(maps[b] - zeroed).max() > 0.05  # a zero fill, wrong here, would show


def _scorecam_by_definition(model, variables, images, targets):
  """Score-CAM of CamNet(strides=(2, 2)) on 8x8 images, every channel scored, in numpy."""
  features = _features(model, variables, images)
  apply = jax.jit(model.apply)
  maps = []
  for b, target in enumerate(targets):
    masks = np.stack([_bilinear_aligned(features[b, ..., c], (8, 8)) for c in range(features.shape[-1])])
    low, high = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
    masks = (masks - low) / (high - low + 1e-8)
    scores = np.asarray(apply(variables, np.asarray(images[b])[None] * masks[..., None]), np.float64)[:, target]
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    raw = np.maximum(np.einsum("hwc,c->hw", features[b], weights), 0)
    maps.append(_normalised(_bilinear_half_pixel(raw, (8, 8))))
  return np.stack(maps)


def test_scorecam_matches_its_definition_computed_with_numpy():
  model, variables, images = _setup(CamNet(strides=(2, 2)), _images(2))
  targets = np.array([0, 2])
  assert _features(model, variables, images).shape[1:] == (4, 4, 5)
  np.testing.assert_allclose(cam.scorecam(model, variables, images, targets, layer="features"),
                             _scorecam_by_definition(model, variables, images, targets), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, None])
def test_scorecam_channels_zero_everywhere_score_the_zero_image(chunk_size):
  # Channel 1 is zero on both images, channel 3 only on the first (all of whose pixels are negative): the
  # explainer scores such channels by one shared forward pass of the zero image and skips the chunks past every
  # image's live channels (chunk_size 1: rank 4 of 0..4; 2: the remainder), which must not change the maps.
  images = _images(2).at[0].set(-jnp.abs(_images(2)[0]))
  model, variables, images = _setup(CamNet(strides=(2, 2)), images)
  conv = variables["params"]["features"]
  kernel = conv["kernel"].at[..., 1].set(0.0).at[..., 3].set(0.0).at[1, 1, 0, 3].set(1.0)
  variables = {"params": {**variables["params"], "features": {"kernel": kernel,
                                                               "bias": conv["bias"].at[1].set(0.0).at[3].set(0.0)}}}
  features = _features(model, variables, images)
  assert np.all(features[:, ..., 1] == 0) and np.all(features[0, ..., 3] == 0) and np.any(features[1, ..., 3] > 0)
  live = features.max(axis=(1, 2)) > 0
  assert live.sum(axis=1).tolist() == [2, 4]  # the first image's channel 2 is dead as well
  targets = np.array([1, 2])
  np.testing.assert_allclose(cam.scorecam(model, variables, images, targets, layer="features", chunk_size=chunk_size),
                             _scorecam_by_definition(model, variables, images, targets), rtol=1e-4, atol=1e-5)


def test_eigen_projection_of_a_rank_one_layer_follows_the_stated_sign():
  rng = np.random.default_rng(0)
  pattern = rng.normal(size=(3, 4))
  for channels in (np.array([1.0, 2.0, -0.5]), np.array([-1.0, -2.0, 0.5])):
    activations = pattern[None, :, :, None] * channels + 0.3  # A[p, c] = s_p v_c + const
    projection = np.asarray(cam.eigen_projection(jnp.asarray(activations, jnp.float32)))[0]
    # The first principal direction is +-v / |v|; the sign makes the projection follow sum_c A = s_p sum(v).
    expected = (pattern - pattern.mean()) * np.linalg.norm(channels) * np.sign(channels.sum())
    np.testing.assert_allclose(projection, expected, rtol=1e-4, atol=1e-5)


def test_eigencam_is_the_first_principal_component_for_every_target():
  model, variables, images = _setup(TwoConvNet(), _images(2))
  features = _features(model, variables, images, "conv2")
  maps = np.asarray(cam.eigencam(model, variables, images, np.array([[0, 2], [1, 1]]), layer="conv2"))
  for b in range(2):
    centred = features[b].reshape(-1, 6) - features[b].reshape(-1, 6).mean(axis=0)
    projection = centred @ np.linalg.svd(centred)[2][0]
    projection *= np.sign(projection @ features[b].reshape(-1, 6).sum(axis=1))
    expected = _normalised(_bilinear_half_pixel(np.maximum(projection.reshape(4, 4), 0), (8, 8)))
    for k in range(2):
      np.testing.assert_allclose(maps[b, k], expected, rtol=1e-4, atol=1e-5)


# --- targets, chunks, layers, compilation -----------------------------------------------------------

def _score_of_class_1(logits):  # a module-level function: one object, compiled once per shape
  return logits[:, 1]


@pytest.mark.parametrize("name", list(CAMS))
def test_k_targets_equal_k_single_calls_and_a_function_target_equals_its_class(name):
  explainer = CAMS[name]
  model, variables, images = _setup(TwoConvNet(), _images(2))
  together = np.asarray(explainer(model, variables, images, np.array([[0, 2], [1, 0]]), layer="conv1"))
  assert together.shape == (2, 2, 8, 8)
  for k, single in enumerate((np.array([0, 1]), np.array([2, 0]))):
    np.testing.assert_allclose(together[:, k], explainer(model, variables, images, single, layer="conv1"),
                               rtol=1e-5, atol=1e-6)
  by_class = np.asarray(explainer(model, variables, images, 1, layer="conv1"))
  assert by_class.min() >= 0 and np.all(np.abs(by_class.max(axis=(1, 2)) - 1) < 1e-6)
  if name in ("LayerCAM", "ScoreCAM", "AblationCAM"):  # the gradient CAMs share one path; compiling is slow
    by_function = np.asarray(explainer(model, variables, images, _score_of_class_1, layer="conv1"))
    np.testing.assert_allclose(by_function, by_class, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("explainer", [cam.scorecam, cam.ablationcam])
def test_chunk_size_does_not_change_the_maps(explainer):
  model, variables, images = _setup(TwoConvNet(), _images(3))
  targets = np.array([0, 1, 2])
  whole = explainer(model, variables, images, targets, layer="conv1")  # 4 channels: one call
  for chunk_size in (1, 3):  # four calls in a scan; one call and a remainder of one
    np.testing.assert_allclose(explainer(model, variables, images, targets, layer="conv1", chunk_size=chunk_size),
                               whole, rtol=1e-5, atol=1e-6)


def _flops(function, *args):
  # XLA's cost analysis of the lowered program (no compilation needed); one call here, so no loop is undercounted.
  analysis = jax.jit(function).lower(*args).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return analysis["flops"]


def test_ablationcam_runs_the_network_below_the_layer_once_per_call():
  model, variables, images = _setup(DeepCNN(), _images(2))
  targets = np.array([0, 1])
  forward = _flops(lambda v, x: model.apply(v, x, train=False), variables, images)
  ablation = _flops(lambda v, x: cam.ablationcam(model, v, x, targets, layer="conv4", chunk_size=8), variables,
                    images)
  # One forward for the scores and activations, one below conv4 for the call, 8 ablated heads: about 2 forwards.
  # Computing the convolutions once per ablated channel would cost 9.
  assert ablation < 3 * forward, (ablation, forward)


def test_one_layer_in_a_list_is_that_layer():
  model, variables, images = _setup(TwoConvNet(), _images(2))
  for explainer in (cam.gradcam, cam.scorecam):
    np.testing.assert_array_equal(explainer(model, variables, images, [0, 1], layer=["conv2"]),
                                  explainer(model, variables, images, [0, 1], layer="conv2"))
  np.testing.assert_array_equal(cam.gradcam(model, variables, images, [0, 1]),
                                cam.gradcam(model, variables, images, [0, 1], layer="conv2"))


def test_fused_gradient_cam_takes_each_layers_full_gradient():
  model, variables, images = _setup(TwoConvNet(), _images(2))
  targets = jnp.array([[0], [2]])
  checked = explain.targets.check_targets(model, images, targets)
  infos = cam.resolve_layers(model, images.shape[1:], ["conv1", "conv2"])
  together = jax.jit(lambda v, x: cam._probe_gradients(model, v, x, checked, infos, None))(variables, images)
  for info, (activations, grads) in zip(infos, together):
    alone_activations, alone_grads = explain.features.probe_gradients(model, variables, images, checked, info)
    np.testing.assert_allclose(activations, alone_activations, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads, alone_grads, rtol=1e-5, atol=1e-8)


def test_fused_gradient_cam_costs_one_forward_pass():
  model, variables, images = _setup(DeepCNN(), _images(2))
  checked = explain.targets.check_targets(model, images, np.array([0, 1]))
  infos = cam.resolve_layers(model, images.shape[1:], ["conv2", "conv3"])
  jaxpr = jax.make_jaxpr(lambda v, x: cam.class_activation_maps(model, v, x, checked, infos))(variables, images)
  # 4 forward convolutions and the input-gradients of conv4 and conv3: no second forward for the second layer,
  # no backward below the lower layer.
  assert str(jaxpr).count("conv_general_dilated") == 6, jaxpr


def test_bad_inputs_give_one_line_errors():
  model, variables, images = _setup(TwoConvNet(), _images(2))
  targets = np.array([0, 1])
  for explainer in CAMS.values():
    one_line_error(lambda: explainer(model, variables, images, targets, layer="block5_conv3"), "block5_conv3",
                    "conv1", "conv2")
    one_line_error(lambda: explainer(model, variables, images, targets, layer=["conv1", "nope"]), "nope")
    one_line_error(lambda: explainer(model, variables, images, targets, layer="gap"), "(B, H, W, C)", "conv2")
    one_line_error(lambda: explainer(model, variables, images, targets, layer=[]), "list of layer names")
    one_line_error(lambda: explainer(model, variables, images, targets, layer=["conv1", 2]), "list of layer names")
    one_line_error(lambda: explainer(model, variables, images, targets, layer=["conv2", "conv2"]), "'conv2'",
                    "once")
    one_line_error(lambda: explainer(model, variables, images, [0, 3]), "3", "0..2")
  for explainer in (cam.scorecam, cam.ablationcam):
    for bad in (0, -2):
      one_line_error(lambda: explainer(model, variables, images, targets, chunk_size=bad), "chunk_size",
                      "positive", "channels per model call", str(bad))
    for bad in (2.5, "4", True):
      one_line_error(lambda: explainer(model, variables, images, targets, chunk_size=bad), "chunk_size", "int")


def test_constant_images_give_finite_maps_from_the_same_compiled_call():
  model, variables, images = _setup(TwoConvNet(), _images(2))
  for explainer in CAMS.values():
    explainer(model, variables, images, np.array([0, 1]), layer=["conv1", "conv2"])
    compiled = cam._cam._cache_size()
    for fill in (0.0, 1.0):  # other images and variables of the same shapes: no recompilation
      constant = jnp.full((2, 8, 8, 3), fill, jnp.float32)
      maps = explainer(model, jax.tree.map(lambda a: (1 + fill) * a, variables), constant, np.array([2, 2]),
                       layer=["conv1", "conv2"])
      assert np.isfinite(np.asarray(maps)).all(), explainer.__name__
    assert cam._cam._cache_size() == compiled, explainer.__name__


# --- against pytorch-grad-cam on the same weights ---------------------------------------------------

def _peers():
  pytest.importorskip("torch", reason="torch is a test peer: pip install -r requirements-peers.txt")
  pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam is a test peer: pip install -r "
                      "requirements-peers.txt")
  import peers  # pylint: disable=import-outside-toplevel  # tests/peers.py, which imports torch
  return peers


def _torch_cam(name, torch_model, module_paths, images, targets):
  import pytorch_grad_cam  # pylint: disable=import-outside-toplevel
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=import-outside-toplevel
  modules = dict(torch_model.named_modules())
  peers = _peers()
  with getattr(pytorch_grad_cam, name)(torch_model, [modules[path] for path in module_paths]) as method:
    return method(peers.nchw(images), [ClassifierOutputTarget(int(target)) for target in targets])


@pytest.fixture
def eigen_sign_aligned(monkeypatch):
  """pytorch-grad-cam's EigenCAM with its principal direction's sign chosen by cnnjax's rule (SVD leaves it to
  LAPACK): the projection correlates non-negatively with the channel-summed activation."""
  _peers()
  from pytorch_grad_cam import eigen_cam  # pylint: disable=import-outside-toplevel
  project = eigen_cam.get_2d_projection

  def aligned(activations):
    projections = project(activations)
    sums = activations.sum(axis=1)
    agreement = ((projections - projections.mean(axis=(1, 2), keepdims=True)) * sums).sum(axis=(1, 2))
    return np.where(agreement[:, None, None] < 0, -projections, projections)

  monkeypatch.setattr(eigen_cam, "get_2d_projection", aligned)


def _cifar_images(shared_dir, count=4):
  """`count` CIFAR-10 training JPEGs of different classes, with their labels."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with zipfile.ZipFile(shared_dir / "data" / "cifar10_jpeg" / "train.zip") as archive:
    names = sorted(archive.namelist())
    classes = sorted({name.split("/")[1] for name in names})
    picked = names[7::len(names) // count][:count]
    images = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in picked])
  return images.astype(np.float32), np.array([classes.index(name.split("/")[1]) for name in picked])


@pytest.fixture(scope="module")
def resnet20(shared_dir):
  """(torch model, cnnjax model, variables, preprocessed CIFAR images, their labels)."""
  peers = _peers()
  from cnnjax import pretrained  # pylint: disable=import-outside-toplevel
  torch_model, model, variables = peers.resnet20_pair(shared_dir)
  images, labels = _cifar_images(shared_dir)
  mode = pretrained.preprocessing_for(str(shared_dir / "weights" / "resnet_cifar" / "resnet20-12fca82f.th"))
  return torch_model, model, variables, np.asarray(pretrained.preprocess(images, mode)), labels


@pytest.mark.parametrize("name", ["ScoreCAM", "AblationCAM", "LayerCAM", "XGradCAM", "HiResCAM", "EigenCAM"])
def test_resnet20_maps_match_pytorch_grad_cam(name, resnet20, eigen_sign_aligned):
  peers = _peers()
  torch_model, model, variables, images, labels = resnet20
  layer, module = peers.RESNET20_LAYER
  # Score-CAM and Ablation-CAM take all 64 channels in one model call: one program to compile, not a scan.
  options = {"chunk_size": 64} if name in ("ScoreCAM", "AblationCAM") else {}
  ours = CAMS[name](model, variables, images, labels, layer=layer, **options)
  theirs = _torch_cam(name, torch_model, [module], images, labels)
  assert np.asarray(ours).shape == theirs.shape == (4, 32, 32) and np.all(theirs.max(axis=(1, 2)) > 0.5)
  assert peers.correlation(ours, theirs).min() >= 0.99, peers.correlation(ours, theirs)


@pytest.mark.parametrize("name", ["GradCAM"])
def test_resnet20_maps_fused_over_two_layers_match_pytorch_grad_cam(name, resnet20):
  peers = _peers()
  torch_model, model, variables, images, labels = resnet20
  ours = np.asarray(CAMS[name](model, variables, images, labels, layer=["conv3_block3_out", "conv4_block3_out"]))
  theirs = _torch_cam(name, torch_model, ["layer2", "layer3"], images, labels)
  assert peers.correlation(ours, theirs).min() >= 0.99, peers.correlation(ours, theirs)
  # Both layers count: the fused map is neither layer's alone.
  for layer in ("conv3_block3_out", "conv4_block3_out"):
    assert peers.correlation(ours, CAMS[name](model, variables, images, labels, layer=layer)).min() < 0.99
  np.testing.assert_allclose(ours.min(axis=(1, 2)), 0, atol=1e-6)  # min-max scaled, as aggregate_multi_layers
  np.testing.assert_allclose(ours.max(axis=(1, 2)), 1, atol=1e-6)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
  """(torch model, cnnjax model, variables, 2 random 96 px images, targets) of a random-weight ResNet50."""
  peers = _peers()
  torch_model, model, variables = peers.resnet50_pair(tmp_path_factory.mktemp("resnet50"))
  images = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
  with peers.torch.no_grad():
    targets = torch_model(peers.nchw(images)).numpy().argmax(axis=1)  # positive evidence: maps not all zero
  return torch_model, model, variables, images, targets


@pytest.mark.parametrize("name", ["LayerCAM", "XGradCAM", "HiResCAM", "EigenCAM"])
def test_resnet50_maps_match_pytorch_grad_cam(name, resnet50, eigen_sign_aligned):
  peers = _peers()
  torch_model, model, variables, images, targets = resnet50
  layer, module = peers.RESNET50_LAYER
  ours = CAMS[name](model, variables, images, targets, layer=layer)
  theirs = _torch_cam(name, torch_model, [module], images, targets)
  assert np.all(theirs.max(axis=(1, 2)) > 0.5)
  assert peers.correlation(ours, theirs).min() >= 0.99, peers.correlation(ours, theirs)
