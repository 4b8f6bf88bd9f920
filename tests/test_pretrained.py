"""cnnjax.pretrained against the frameworks the weights come from.

Keras 3 (JAX backend) runs the same files. torchvision layouts are also checked here against hand-written NCHW
forwards (jax.lax, PyTorch's layouts and semantics) of random-weight `.npz` state dicts, which need no torch;
test_pretrained_torch.py compares with PyTorch itself.
"""
import os
import shutil

os.environ["KERAS_BACKEND"] = "jax"

import h5py  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax import lax  # noqa: E402
from PIL import Image  # noqa: E402

from cnnjax import pretrained  # noqa: E402

@pytest.fixture(scope="module")
def keras():
  return pytest.importorskip("keras", reason="keras is a test peer: pip install -r requirements-peers.txt")

IMAGENET_DOGS = range(151, 269)
IMAGENET_CATS = range(281, 286)


def assert_close(ours, reference, rtol=1e-4):
  ours, reference = np.asarray(ours), np.asarray(reference)
  np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol * np.abs(reference).max())


def one_line_error(call, match):
  with pytest.raises(ValueError, match=match) as error:
    call()
  assert "\n" not in str(error.value)
  return str(error.value)


def randomize_batch_norm(keras, model, seed=0):
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      shapes = [w.shape for w in layer.get_weights()]
      layer.set_weights([rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0, 0.1, shapes[1]),
                         rng.normal(0, 0.1, shapes[2]), rng.uniform(0.5, 1.5, shapes[3])])


# ---------------------------------------------------------------------------------------------------------------
# Keras full models (model.save('x.h5')).

def small_sequential(keras):
  layers = keras.layers
  model = keras.Sequential([
      keras.Input((12, 12, 3)),
      layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a"),
      layers.BatchNormalization(name="conv_a_bn"),
      layers.MaxPooling2D(name="pool_a"),
      layers.Dropout(0.3, name="drop_a"),
      layers.Conv2D(6, 3, strides=1, padding="valid", name="conv_b"),
      layers.Activation("relu", name="conv_b_relu"),
      layers.AveragePooling2D(pool_size=2, strides=1, name="pool_b"),
      layers.Flatten(name="flatten"),
      layers.Dense(8, activation="tanh", name="hidden"),
      layers.Dense(5, activation="softmax", name="predictions"),
  ])
  randomize_batch_norm(keras, model)
  return model


def test_keras_sequential_model_matches_keras(keras, tmp_path):
  reference = small_sequential(keras)
  reference.save(tmp_path / "model.h5")
  model, variables = pretrained.load(tmp_path / "model.h5")
  images = np.random.RandomState(1).uniform(0, 1, (3, 12, 12, 3)).astype(np.float32)
  logits = model.apply(variables, images)
  assert not np.allclose(np.asarray(logits).sum(-1), 1.0)  # logits, not probabilities
  assert_close(jax.nn.softmax(logits), reference(images, training=False))
  assert set(variables["params"]) == {"conv_a", "conv_a_bn", "conv_b", "hidden", "predictions"}
  assert set(variables["batch_stats"]) == {"conv_a_bn"}
  assert pretrained.preprocessing_for(str(tmp_path / "model.h5")) == "rescale"


def test_keras_functional_chain_matches_keras(keras, tmp_path):
  layers = keras.layers
  inputs = keras.Input((10, 10, 3))
  outputs = layers.Conv2D(5, 3, strides=2, padding="same", name="stem")(inputs)
  outputs = layers.BatchNormalization(epsilon=1e-5, name="stem_bn")(outputs)
  outputs = layers.Activation("relu6", name="stem_relu")(outputs)
  outputs = layers.GlobalAveragePooling2D()(outputs)
  outputs = layers.Dense(4)(outputs)
  outputs = layers.Activation("softmax")(outputs)
  reference = keras.Model(inputs, outputs)
  randomize_batch_norm(keras, reference, seed=3)
  reference.save(tmp_path / "functional.h5")
  model, variables = pretrained.load(tmp_path / "functional.h5")
  images = np.random.RandomState(2).normal(0, 2, (2, 10, 10, 3)).astype(np.float32)
  assert_close(jax.nn.softmax(model.apply(variables, images)), reference(images, training=False))
  assert "stem_bn" in variables["batch_stats"]


def test_keras_cifar10_files_match_keras(keras, shared_dir):
  from bench.pretrained_check import cifar_images, keras_cifar_model  # pylint: disable=import-outside-toplevel
  images, _ = cifar_images(16)
  for path in sorted((shared_dir / "weights" / "keras_cifar10").glob("*.h5")):
    model, variables = pretrained.load(path)
    inputs = pretrained.preprocess(images, pretrained.preprocessing_for(str(path)))
    reference = keras_cifar_model(str(path))(np.asarray(inputs), training=False)
    assert_close(model.apply(variables, inputs), reference)


# ---------------------------------------------------------------------------------------------------------------
# keras.applications weight files.

def mobilenet_path(shared_dir):
  return str(shared_dir / "weights" / "mobilenet" / "mobilenet_2_5_224_tf.h5")


def test_shipped_mobilenet_matches_keras_applications(keras, shared_dir):
  path = mobilenet_path(shared_dir)
  model, variables = pretrained.load(path)
  assert model.alpha == 0.25 and variables["params"]["conv_preds"]["kernel"].shape == (1, 1, 256, 1000)
  photos = [np.asarray(Image.open(shared_dir / "data" / "photos" / name).convert("RGB").resize((224, 224)),
                       np.float32) for name in ("cat_dog.jpg", "both.png")]
  noise = np.random.RandomState(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
  assert pretrained.preprocessing_for(path) == "tf"
  inputs = pretrained.preprocess(np.concatenate([np.stack(photos), noise]), "tf")
  logits = model.apply(variables, inputs)
  reference = keras.applications.MobileNet(alpha=0.25, weights=path)(np.asarray(inputs), training=False)
  assert_close(jax.nn.softmax(logits), reference)
  for top5 in pretrained.decode_predictions(logits[:2]):
    print(top5)
    assert top5[0][0] in IMAGENET_DOGS or top5[0][0] in IMAGENET_CATS


def test_notop_file_gets_fresh_head(shared_dir, tmp_path):
  path = tmp_path / "mobilenet_notop.h5"
  shutil.copy(mobilenet_path(shared_dir), path)
  with h5py.File(path, "r+") as file:
    del file["conv_preds"]
    file.attrs["layer_names"] = [name for name in file.attrs["layer_names"] if name != b"conv_preds"]
  one_line_error(lambda: pretrained.load(path), "num_classes")
  model, variables = pretrained.load(path, num_classes=3)
  full_model, full = pretrained.load(mobilenet_path(shared_dir))
  assert variables["params"]["conv_preds"]["kernel"].shape == (1, 1, 256, 3)
  np.testing.assert_array_equal(variables["params"]["conv_pw_13"]["kernel"], full["params"]["conv_pw_13"]["kernel"])
  assert model.apply(variables, jnp.zeros((1, 32, 32, 3))).shape == (1, 3)


def legacy_weights_file(model, path):
  """What keras.applications downloads: Keras's legacy `save_weights` HDF5 layout."""
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=import-outside-toplevel
  with h5py.File(path, "w") as file:
    legacy_h5_format.save_weights_to_hdf5_group(file, model)


def test_keras_resnet50_weights_file_matches_keras(keras, tmp_path):
  reference = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=7,
                                          classifier_activation=None)
  randomize_batch_norm(keras, reference)
  legacy_weights_file(reference, tmp_path / "resnet50.h5")
  model, variables = pretrained.load(tmp_path / "resnet50.h5")
  assert not model.stride_on_3x3 and pretrained.preprocessing_for(str(tmp_path / "resnet50.h5")) == "caffe"
  images = np.random.RandomState(0).normal(0, 50, (2, 32, 32, 3)).astype(np.float32)
  assert_close(model.apply(variables, images), reference(images, training=False))


# ---------------------------------------------------------------------------------------------------------------
# PyTorch state dicts.

def cifar_resnet_path(shared_dir, depth):
  return next((shared_dir / "weights" / "resnet_cifar").glob(f"resnet{depth}-*.npz"))


def test_cifar_resnet20_is_accurate_on_cifar_train(shared_dir):
  from bench.pretrained_check import cifar_images  # pylint: disable=import-outside-toplevel
  path = cifar_resnet_path(shared_dir, 20)
  model, variables = pretrained.load(path)
  assert pretrained.preprocessing_for(str(path)) == "torch"
  images, labels = cifar_images(200)
  logits = jax.jit(model.apply)(variables, pretrained.preprocess(images, "torch"))
  # Training-split images, but lossy JPEGs: 0.86 measured here (chance 0.1).
  assert np.mean(np.argmax(logits, -1) == labels) > 0.8


def torch_conv(inputs, weight, stride=1, padding=0, bias=None):
  outputs = lax.conv_general_dilated(inputs, weight, (stride, stride), [(padding, padding)] * 2,
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
  return outputs if bias is None else outputs + bias[None, :, None, None]


def torch_max_pool(inputs, window, stride, padding=0):
  return lax.reduce_window(inputs, -jnp.inf, lax.max, (1, 1, window, window), (1, 1, stride, stride),
                           [(0, 0), (0, 0), (padding, padding), (padding, padding)])


def torch_batch_norm(inputs, state, prefix):
  shape = (1, -1, 1, 1)
  scale = state[f"{prefix}.weight"] / np.sqrt(state[f"{prefix}.running_var"] + 1e-5)
  return (inputs - state[f"{prefix}.running_mean"].reshape(shape)) * scale.reshape(shape) + \
      state[f"{prefix}.bias"].reshape(shape)


class RandomState:
  """A random torch-layout state dict, scaled so activations stay O(1) through deep networks."""

  def __init__(self, seed):
    self.rng = np.random.RandomState(seed)
    self.state = {}

  def conv(self, name, out, inp, kernel, bias=False):
    self.state[f"{name}.weight"] = self.rng.normal(0, np.sqrt(2 / (inp * kernel * kernel)),
                                                   (out, inp, kernel, kernel)).astype(np.float32)
    if bias:
      self.state[f"{name}.bias"] = self.rng.normal(0, 0.1, out).astype(np.float32)

  def linear(self, name, out, inp):
    self.state[f"{name}.weight"] = self.rng.normal(0, np.sqrt(1 / inp), (out, inp)).astype(np.float32)
    self.state[f"{name}.bias"] = self.rng.normal(0, 0.1, out).astype(np.float32)

  def batch_norm(self, name, channels):
    for suffix, values in (("weight", self.rng.uniform(0.3, 0.8, channels)),
                           ("bias", self.rng.normal(0, 0.1, channels)),
                           ("running_mean", self.rng.normal(0, 0.1, channels)),
                           ("running_var", self.rng.uniform(0.5, 1.5, channels))):
      self.state[f"{name}.{suffix}"] = values.astype(np.float32)
    self.state[f"{name}.num_batches_tracked"] = np.array(100.0, np.float32)


VGG16_TORCHVISION = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def test_torchvision_vgg16_layout_matches_nchw_reference(tmp_path):
  size, classes = 64, 6  # a 2x2 final map, so the (C, H, W) -> (H, W, C) flatten permutation matters
  weights = RandomState(0)
  index, channels = 0, 3
  for item in VGG16_TORCHVISION:  # torchvision's features: conv, ReLU, ..., MaxPool
    if item == "M":
      index += 1
    else:
      weights.conv(f"features.{index}", item, channels, 3, bias=True)
      index, channels = index + 2, item
  weights.linear("classifier.0", 4096, 512 * (size // 32) ** 2)
  weights.linear("classifier.3", 4096, 4096)
  weights.linear("classifier.6", classes, 4096)
  state = weights.state
  np.savez(tmp_path / "vgg16.npz", **state)

  def reference(images):
    outputs, index = jnp.transpose(images, (0, 3, 1, 2)), 0
    for item in VGG16_TORCHVISION:
      if item == "M":
        outputs, index = torch_max_pool(outputs, 2, 2), index + 1
      else:
        outputs = jax.nn.relu(torch_conv(outputs, state[f"features.{index}.weight"], 1, 1,
                                         state[f"features.{index}.bias"]))
        index += 2
    outputs = outputs.reshape(outputs.shape[0], -1)  # torch.flatten: (C, H, W) order
    for layer in (0, 3, 6):
      outputs = outputs @ state[f"classifier.{layer}.weight"].T + state[f"classifier.{layer}.bias"]
      outputs = jax.nn.relu(outputs) if layer < 6 else outputs
    return outputs

  model, variables = pretrained.load(tmp_path / "vgg16.npz")
  assert model.depth == 16 and "block5_conv3" in variables["params"]
  assert pretrained.preprocessing_for(str(tmp_path / "vgg16.npz")) == "torch"
  images = np.random.RandomState(1).normal(0, 1, (2, size, size, 3)).astype(np.float32)
  assert_close(model.apply(variables, images), reference(images))


def test_torchvision_resnet50_layout_matches_nchw_reference(tmp_path):
  weights = RandomState(1)
  weights.conv("conv1", 64, 3, 7)
  weights.batch_norm("bn1", 64)
  channels = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
    for block in range(blocks):
      prefix = f"layer{stage}.{block}"
      for number, (out, inp, kernel) in enumerate(((width, channels, 1), (width, width, 3), (width * 4, width, 1)),
                                                   start=1):
        weights.conv(f"{prefix}.conv{number}", out, inp, kernel)
        weights.batch_norm(f"{prefix}.bn{number}", out)
      if block == 0:
        weights.conv(f"{prefix}.downsample.0", width * 4, channels, 1)
        weights.batch_norm(f"{prefix}.downsample.1", width * 4)
      channels = width * 4
  weights.linear("fc", 5, 2048)
  state = weights.state
  np.savez(tmp_path / "resnet50.npz", **{f"module.{key}": value for key, value in state.items()})

  def reference(images):  # torchvision.models.resnet50: Bottleneck with the stride on conv2 (v1.5)
    outputs = jnp.transpose(images, (0, 3, 1, 2))
    outputs = jax.nn.relu(torch_batch_norm(torch_conv(outputs, state["conv1.weight"], 2, 3), state, "bn1"))
    outputs = torch_max_pool(outputs, 3, 2, 1)
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
      for block in range(blocks):
        prefix, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
        branch = outputs
        for number, (conv_stride, padding) in enumerate(((1, 0), (stride, 1), (1, 0)), start=1):
          branch = torch_conv(branch, state[f"{prefix}.conv{number}.weight"], conv_stride, padding)
          branch = torch_batch_norm(branch, state, f"{prefix}.bn{number}")
          branch = jax.nn.relu(branch) if number < 3 else branch
        shortcut = outputs
        if block == 0:
          shortcut = torch_batch_norm(torch_conv(outputs, state[f"{prefix}.downsample.0.weight"], stride), state,
                                      f"{prefix}.downsample.1")
        outputs = jax.nn.relu(branch + shortcut)
    return outputs.mean((2, 3)) @ state["fc.weight"].T + state["fc.bias"]

  model, variables = pretrained.load(tmp_path / "resnet50.npz")
  assert model.stride_on_3x3 and "conv5_block3_3_conv" in variables["params"]
  images = np.random.RandomState(2).normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
  assert_close(model.apply(variables, images), reference(images))


# ---------------------------------------------------------------------------------------------------------------
# Inputs and outputs.

def test_decode_predictions_orders_by_probability(monkeypatch, tmp_path):
  logits = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
  decoded = pretrained.decode_predictions(logits, top=2, class_names=["cat, kitty", "dog", "bird"])
  assert [[(i, name) for i, name, _ in row] for row in decoded] == [[(1, "dog"), (2, "bird")],
                                                                    [(0, "cat"), (2, "bird")]]
  np.testing.assert_allclose(decoded[0][0][2], 0.6, rtol=1e-5)
  one_line_error(lambda: pretrained.decode_predictions(logits), "1000 class names|class names not found")
  monkeypatch.setenv("CNNJAX_SHARED", str(tmp_path))
  one_line_error(lambda: pretrained.decode_predictions(np.zeros((1, 1000))), "CNNJAX_SHARED")


def test_preprocessing_modes():
  assert pretrained.preprocessing_for("keras:vgg16") == "caffe"
  assert pretrained.preprocessing_for("torch:resnet_cifar") == "torch"
  images = np.full((1, 2, 2, 3), 255.0, np.float32)
  np.testing.assert_allclose(pretrained.preprocess(images, "tf"), 1.0)
  one_line_error(lambda: pretrained.preprocessing_for("keras:unknown"), "unknown weight source")


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line each.

def test_wrong_architecture_names_first_missing_layer(shared_dir):
  message = one_line_error(lambda: pretrained.load(cifar_resnet_path(shared_dir, 20), arch="resnet32"),
                           "missing tensor")
  assert "conv2_block4_1_conv" in message
  one_line_error(lambda: pretrained.load(cifar_resnet_path(shared_dir, 20), arch="vgg16"), "resnet20")


def test_shape_mismatch_names_layer_and_both_shapes(shared_dir):
  message = one_line_error(lambda: pretrained.load(mobilenet_path(shared_dir), alpha=0.5), "conv1")
  assert "(3, 3, 3, 8)" in message and "(3, 3, 3, 16)" in message


def test_truncated_files(shared_dir, tmp_path):
  for source, name in ((mobilenet_path(shared_dir), "half.h5"), (cifar_resnet_path(shared_dir, 20), "half.npz")):
    content = open(source, "rb").read()
    (tmp_path / name).write_bytes(content[:len(content) // 2])
    one_line_error(lambda: pretrained.load(tmp_path / name), "truncated or corrupt")


def test_unsupported_keras_layer_and_missing_tensor(keras, tmp_path):
  small_sequential(keras).save(tmp_path / "model.h5")
  shutil.copy(tmp_path / "model.h5", tmp_path / "missing.h5")
  with h5py.File(tmp_path / "model.h5", "r+") as file:
    file.attrs["model_config"] = file.attrs["model_config"].replace('"Dropout"', '"SpatialDropout2D"')
  one_line_error(lambda: pretrained.load(tmp_path / "model.h5"), "'drop_a' of type SpatialDropout2D")
  with h5py.File(tmp_path / "missing.h5", "r+") as file:
    group = file["model_weights"]["hidden"]
    group.attrs["weight_names"] = [name for name in group.attrs["weight_names"] if not name.endswith("bias")]
  message = one_line_error(lambda: pretrained.load(tmp_path / "missing.h5"), "missing tensor")
  assert "'hidden'" in message and "bias" in message
  one_line_error(lambda: pretrained.load(tmp_path / "nothing.h5"), "no weight file")


def test_torch_files_need_torch_or_npz(tmp_path):
  (tmp_path / "model.th").write_bytes(b"not a checkpoint")
  try:
    import torch  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    match = "torch.load failed"
  except ImportError:
    match = "needs torch"
  one_line_error(lambda: pretrained.load(tmp_path / "model.th"), match)
