"""Foreign weight files: pickles that would run code, truncated or random files, another architecture, missing or
extra tensors. One line each, and nothing executed.

tests/test_pretrained.py covers a half HDF5 / half .npz, ResNet-20 weights as ResNet-32 or VGG16, a MobileNet of
another width, a Keras model with an unsupported layer or a missing bias, and a missing file; these are the rest.
"""
import argparse
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from cnnjax import pretrained
from conftest import one_line_error


@pytest.fixture
def resnet20(shared_dir):
  return shared_dir / "weights" / "resnet_cifar" / "resnet20-12fca82f.npz"


@pytest.fixture
def mobilenet(shared_dir):
  return shared_dir / "weights" / "mobilenet" / "mobilenet_2_5_224_tf.h5"


@pytest.fixture
def keras_model(shared_dir):
  return shared_dir / "weights" / "keras_cifar10" / "andrewtzeva_cifar10_model.h5"


class RunsCode:
  """Unpickling this runs `touch MARKER`: what a malicious weight file does."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def state_dict(path):
  return dict(np.load(path))


# --- pickles ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_a_torch_file_that_would_run_code_is_refused_and_nothing_runs(resnet20, tmp_path, legacy_format):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "code_ran"
  path = tmp_path / ("evil.th" if legacy_format else "evil.pth")
  tensors = {key: torch.from_numpy(value) for key, value in state_dict(resnet20).items()}
  torch.save({"state_dict": tensors, "payload": RunsCode(marker)}, path,
             _use_new_zipfile_serialization=not legacy_format)
  one_line_error(lambda: pretrained.load(path), "refused to unpickle posix.system", "weights_only=True",
                 "pass allow_pickle=True")
  one_line_error(lambda: pretrained.source_of(path), "refused to unpickle")
  assert not marker.exists()


def test_a_pickled_model_is_refused_and_a_trusted_checkpoint_loads_with_the_opt_in(resnet20, tmp_path):
  torch = pytest.importorskip("torch")
  torch.save(torch.nn.Linear(3, 2), tmp_path / "module.pth")
  one_line_error(lambda: pretrained.load(tmp_path / "module.pth"), "refused to unpickle torch.nn.modules.linear.Linear",
                 "re-save it as a state dict of tensors")
  # A common real file: the state dict saved beside the training script's argparse arguments.
  tensors = {key: torch.from_numpy(value) for key, value in state_dict(resnet20).items()}
  torch.save({"state_dict": tensors, "args": argparse.Namespace(lr=0.1)}, tmp_path / "with_args.pth")
  one_line_error(lambda: pretrained.load(tmp_path / "with_args.pth"), "refused to unpickle argparse.Namespace")
  model, variables = pretrained.load(tmp_path / "with_args.pth", allow_pickle=True)
  reference = pretrained.load(resnet20)[1]
  np.testing.assert_array_equal(variables["params"]["predictions"]["kernel"],
                                reference["params"]["predictions"]["kernel"])


def test_an_npz_with_object_arrays_is_refused_and_nothing_runs(resnet20, tmp_path):
  marker = tmp_path / "code_ran"
  np.savez(tmp_path / "evil.npz", **state_dict(resnet20), payload=np.array([RunsCode(marker)], dtype=object))
  one_line_error(lambda: pretrained.load(tmp_path / "evil.npz"), "refused to unpickle its object arrays",
                 "allow_pickle=False", "pass allow_pickle=True")
  assert not marker.exists()


def test_a_keras_lambda_layer_with_marshalled_code_is_refused(keras_model, tmp_path):
  path = tmp_path / "lambda.h5"
  shutil.copy(keras_model, path)
  with h5py.File(path, "r+") as file:
    config = json.loads(file.attrs["model_config"])
    layers = config["config"]["layers"] if isinstance(config["config"], dict) else config["config"]
    # Keras stores a Lambda's function as marshalled bytecode: rebuilding it would run it.
    layers.insert(1, {"class_name": "Lambda", "config": {"name": "payload", "function": ["4wAAAAAAAAAA", None, None],
                                                          "function_type": "lambda", "arguments": {}}})
    file.attrs["model_config"] = json.dumps(config)
  one_line_error(lambda: pretrained.load(path), "Keras layer 'payload' of type Lambda is not supported")


# --- truncated, empty or random files ----------------------------------------------------------------------------

def truncated(source, fraction):
  content = source.read_bytes()
  return content[:int(len(content) * fraction)]


def bad_file(kind, tmp_path, resnet20, shared_dir):
  """(path, expected message fragment) of a file that is not a readable weight file."""
  keras_file = shared_dir / "weights" / "keras_cifar10" / "sagecodes_keras_cifar10_trained_model.h5"
  legacy = shared_dir / "weights" / "resnet_cifar" / "resnet20-12fca82f.th"
  files = {
      "zero-byte .h5": ("empty.h5", b"", "not an HDF5, .npz or PyTorch file"),
      "zero-byte .npz": ("empty.npz", b"", "not a readable .npz file, it is truncated or corrupt"),
      "random .h5": ("random.h5", os.urandom(2048), "not an HDF5, .npz or PyTorch file"),
      "random .npz": ("random.npz", os.urandom(2048), "not a readable .npz file"),
      "HDF5 header only": ("header.h5", truncated(keras_file, 0.001), "not a readable HDF5 file, it is truncated"),
      "Keras model cut at 99%": ("cut.h5", truncated(keras_file, 0.99), "not a readable HDF5 file, it is truncated"),
      ".npz cut at 10%": ("cut.npz", truncated(resnet20, 0.1), "not a readable .npz file, it is truncated"),
      "zero-byte .pth": ("empty.pth", b"", "torch.load failed, the file is truncated, corrupt"),
      "text named .th": ("notes.th", b"not a checkpoint at all", "torch.load failed, the file is truncated, corrupt"),
      "legacy .th cut in half": ("cut.th", truncated(legacy, 0.5), "torch.load failed, the file is truncated"),
  }
  name, content, fragment = files[kind]
  (tmp_path / name).write_bytes(content)
  return tmp_path / name, fragment


@pytest.mark.parametrize("kind", ["zero-byte .h5", "zero-byte .npz", "random .h5", "random .npz", "HDF5 header only",
                                  "Keras model cut at 99%", ".npz cut at 10%", "zero-byte .pth", "text named .th",
                                  "legacy .th cut in half"])
def test_truncated_empty_or_random_files(kind, tmp_path, resnet20, shared_dir):
  if kind.endswith((".pth", ".th", "half")):
    pytest.importorskip("torch")
  path, fragment = bad_file(kind, tmp_path, resnet20, shared_dir)
  one_line_error(lambda: pretrained.load(path), str(path), fragment)


def test_hdf5_that_is_not_keras_and_the_keras3_format(tmp_path):
  with h5py.File(tmp_path / "data.h5", "w") as file:
    file["x"] = np.zeros(3)
  one_line_error(lambda: pretrained.load(tmp_path / "data.h5"), "HDF5 file without Keras `model_config`")
  (tmp_path / "model.keras").write_bytes(b"PK\x03\x04")
  one_line_error(lambda: pretrained.load(tmp_path / "model.keras"), "the Keras 3 .keras format is not supported")
  one_line_error(lambda: pretrained.load(tmp_path), "no weight file at")


# --- another architecture, missing or extra tensors --------------------------------------------------------------

def test_wrong_architecture(resnet20, mobilenet, keras_model, shared_dir, tmp_path):
  one_line_error(lambda: pretrained.load(mobilenet, arch="resnet50"), "holds mobilenet weights, which cannot be "
                 "loaded as arch='resnet50'; use arch='mobilenet'")
  one_line_error(lambda: pretrained.load(mobilenet, arch="vgg16"), "cannot be loaded as arch='vgg16'")
  one_line_error(lambda: pretrained.load(mobilenet, arch="mobilenet_v9"), "unknown arch='mobilenet_v9'")
  one_line_error(lambda: pretrained.load(resnet20, arch="mobilenet"), "holds a resnet20 state dict")
  one_line_error(lambda: pretrained.load(keras_model, arch="vgg16"), "defines its own architecture")
  # A deeper network's weights as a shallower one: its extra blocks would be dropped silently.
  deeper = shared_dir / "weights" / "resnet_cifar" / "resnet32-d509ac18.npz"
  one_line_error(lambda: pretrained.load(deeper, arch="resnet20"), "the file has weights for layer "
                 "'conv2_block4_1_conv' (params/kernel) that resnet20 does not have")
  # A fine-tuned model with an extra layer the architecture lacks.
  np.savez(tmp_path / "extra.npz", **state_dict(resnet20), **{"projection.weight": np.zeros((4, 64), np.float32)})
  one_line_error(lambda: pretrained.load(tmp_path / "extra.npz"), "tensors projection.weight have no place")


def test_missing_tensors(resnet20, mobilenet, tmp_path):
  tensors = state_dict(resnet20)
  del tensors["layer2.1.conv1.weight"]
  np.savez(tmp_path / "no_conv.npz", **tensors)
  one_line_error(lambda: pretrained.load(tmp_path / "no_conv.npz"), "missing tensor for layer 'conv3_block2_1_conv'")
  tensors = state_dict(resnet20)
  del tensors["linear.weight"], tensors["linear.bias"]
  np.savez(tmp_path / "no_head.npz", **tensors)
  one_line_error(lambda: pretrained.load(tmp_path / "no_head.npz"), "unrecognised state dict")
  np.savez(tmp_path / "unrelated.npz", weights=np.zeros(3, np.float32))
  one_line_error(lambda: pretrained.load(tmp_path / "unrelated.npz"), "unrecognised state dict (keys weights")
  # A Keras weights file whose index names a dataset that is gone.
  shutil.copy(mobilenet, tmp_path / "gone.h5")
  with h5py.File(tmp_path / "gone.h5", "r+") as file:
    del file["conv_dw_3"]["conv_dw_3"]["depthwise_kernel:0"]
  one_line_error(lambda: pretrained.load(tmp_path / "gone.h5"), "cannot read conv_dw_3/", "depthwise_kernel")
