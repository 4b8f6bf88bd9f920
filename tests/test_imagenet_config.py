"""configs/resnet50_imagenet.py, flax examples/imagenet's recipe: its settings and schedule against flax's
formulas, kernel-only weight decay, the imagenet2012 source (tfds mock data), and a run end to end on a tiny
generated ImageNet-layout folder (PATH/<wnid>/*.JPEG)."""
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from cnnjax import data
from cnnjax.train import config as config_lib
from cnnjax.train import experiment
from cnnjax.train import loop
from cnnjax.train import optim
from conftest import REPO
from configs import resnet50_imagenet

WNIDS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark: imagenet2012's first three


def _parse(argv_overrides, monkeypatch):
  """The config as train.py's --config flag loads it, with command-line overrides."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True)
  argv = ["train.py", f"--config={REPO / 'configs' / 'resnet50_imagenet.py'}", *argv_overrides]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
  flag_values(argv)
  return flag_values.config


def test_the_recipe_is_flax_imagenets(monkeypatch):
  config = _parse([], monkeypatch)
  config_lib.validate(config)
  assert (config.model, config.num_classes, config.image_size, config.dataset) == (
      "resnet50", 1000, 224, "imagenet2012")
  assert config.model_options.stride_on_3x3 and config.model_options.dtype == "bfloat16"
  assert (config.optimizer, config.momentum, config.nesterov) == ("sgd", 0.9, True)
  assert (config.batch_size, config.num_epochs, config.warmup_epochs) == (1024, 100, 5.0)
  assert config.learning_rate == pytest.approx(0.4)  # flax: 0.1 * batch_size / 256
  assert (config.weight_decay, config.weight_decay_params, config.label_smoothing) == (1e-4, "kernels", 0.0)
  assert config.preprocess == "torch"  # flax's MEAN_RGB / STDDEV_RGB are torchvision's ImageNet mean and std
  model = experiment.create_model(config)
  assert (model.stride_on_3x3, model.dtype) == (True, "bfloat16")
  # The learning rate follows a batch-size override, unless it is set itself.
  assert _parse(["--config.batch_size=256"], monkeypatch).learning_rate == pytest.approx(0.1)
  resolved = experiment.resolve(_parse(["--config.batch_size=2048"], monkeypatch))
  assert resolved.learning_rate == pytest.approx(0.8)
  assert json.loads(config_lib.to_json(resolved))["learning_rate"] == pytest.approx(0.8)
  assert _parse(["--config.batch_size=256", "--config.learning_rate=0.05"], monkeypatch).learning_rate == 0.05


def test_the_schedule_is_flax_imagenets_warmup_then_cosine():
  config = resnet50_imagenet.get_config()
  steps_per_epoch = 7
  schedule = optim.create_schedule(config, steps_per_epoch)
  # flax examples/imagenet/train.py create_learning_rate_fn, verbatim but for the names.
  base = 0.1 * config.batch_size / 256.0
  warmup = optax.linear_schedule(0.0, base, transition_steps=config.warmup_epochs * steps_per_epoch)
  cosine = optax.cosine_decay_schedule(base, decay_steps=max(config.num_epochs - config.warmup_epochs, 1)
                                       * steps_per_epoch)
  flax = optax.join_schedules([warmup, cosine], boundaries=[config.warmup_epochs * steps_per_epoch])
  steps = jnp.arange(0, config.num_epochs * steps_per_epoch + 1)
  np.testing.assert_allclose(jax.vmap(schedule)(steps), jax.vmap(flax)(steps), rtol=1e-5, atol=1e-7)


def test_kernel_only_weight_decay_leaves_biases_and_batch_norm_alone():
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0), "bias": jnp.full((4,), 2.0)},
            "bn": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 2.0)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  config = config_lib.default_config()
  config.update(optimizer="sgd", momentum=0.0, weight_decay=0.5)
  for which, decayed in (("all", {"kernel", "bias", "scale"}), ("kernels", {"kernel"})):
    config.weight_decay_params = which
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    for layer in params:
      for name, update in updates[layer].items():
        expected = -0.1 * 0.5 * 2.0 if name in decayed else 0.0  # -lr * weight_decay * w
        np.testing.assert_allclose(update, expected, err_msg=f"{which}: {layer}/{name}")
  config.update(optimizer="adamw", weight_decay_params="kernels")
  tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0 and float(jnp.abs(updates["bn"]["scale"]).max()) == 0
  config.weight_decay_params = "biases"
  with pytest.raises(ValueError, match="unknown config.weight_decay_params 'biases'; choose one of all, kernels"):
    config_lib.validate(config)


def test_a_run_saved_before_a_new_field_resumes_while_a_changed_field_is_refused():
  current = config_lib.default_config().to_dict()
  saved = {key: value for key, value in current.items() if key != "weight_decay_params"}
  config_lib.check_resumable(saved, current)  # the field did not exist: the run had its default
  with pytest.raises(ValueError, match=r"changed: weight_decay_params"):
    config_lib.check_resumable(saved, {**current, "weight_decay_params": "kernels"})
  # A field new inside a group (early_stopping.restore_best_weights) also counts as its default there.
  saved["early_stopping"] = {"monitor": "val_loss", "patience": 0}
  config_lib.check_resumable(saved, current)
  with pytest.raises(ValueError, match=r"changed: early_stopping"):
    config_lib.check_resumable(saved, {**current, "early_stopping": {**current["early_stopping"],
                                                                     "restore_best_weights": False}})


def test_imagenet2012_comes_with_its_own_validation_split():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    splits = data.load("imagenet2012", image_size=16, validation_split=0.5)
    limited = data.load("imagenet2012", image_size=16, limit_per_class=1)
    validation_labels = np.array([example["label"] for example in tfds.as_numpy(
        tfds.load("imagenet2012", split="validation", shuffle_files=False))])
  assert len(splits.class_names) == 1000 and splits.class_names[:3] == list(WNIDS)
  # Both official splits whole (validation_split carves nothing out of train), decoded by cnnjax from the JPEGs.
  assert splits.train.images.shape == splits.validation.images.shape == (12, 16, 16, 3)
  np.testing.assert_array_equal(splits.validation.labels, validation_labels)
  assert splits.validation.images.dtype == np.uint8 and splits.validation.images.std() > 0
  for images in (limited.train, limited.validation):
    assert np.bincount(images.labels).max() == 1  # at most one per class


def test_imagenet2012_without_the_manual_download_names_the_files_and_the_folder(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match=r"put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar .* in "
                                       rf"{tmp_path}/downloads/manual and rerun"):
    data.load("imagenet2012", image_size=16, data_dir=str(tmp_path))


@pytest.fixture
def imagenet_folder(tmp_path):
  """ImageNet's training layout in miniature: PATH/<wnid>/<wnid>_<n>.JPEG, 8 JPEGs of odd sizes per class."""
  rng = np.random.default_rng(0)
  for label, wnid in enumerate(WNIDS):
    (tmp_path / "train" / wnid).mkdir(parents=True)
    for index in range(8):
      height, width = rng.integers(24, 60, size=2)
      pixels = rng.integers(0, 100, size=(height, width, 3))
      pixels[..., label] += 150
      Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "train" / wnid / f"{wnid}_{index}.JPEG", "JPEG")
  return tmp_path / "train"


def test_the_recipe_trains_end_to_end_on_an_imagenet_layout_folder(imagenet_folder, tmp_path, monkeypatch):
  """The whole recipe (resnet50 v1.5 in bfloat16, SGD Nesterov, warmup + cosine, kernel-only decay, zoom and
  flip) for two steps, only the sizes overridden as a user would on the command line."""
  config = _parse([f"--config.dataset=folder:{imagenet_folder}", "--config.num_classes=3",
                   "--config.image_size=32", "--config.batch_size=8", "--config.eval_batch_size=8",
                   "--config.num_epochs=1", "--config.steps_per_epoch=2", "--config.validation_split=0.25",
                   "--config.warmup_epochs=0.5"], monkeypatch)
  workdir = tmp_path / "run"
  results = loop.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["class_names"] == list(WNIDS)
  assert saved["learning_rate"] == pytest.approx(8 * 0.1 / 256)  # followed the batch-size override
  assert saved["model_options"]["dtype"] == "bfloat16" and saved["weight_decay_params"] == "kernels"
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(history) == 1 and np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_loss"])
  assert results["confusion_matrix"] and sum(map(sum, results["confusion_matrix"])) == 6  # 2 validation per class
  assert "conv5_block3_3_conv" in (workdir / "summary.txt").read_text()


def test_an_early_stopping_group_written_before_restore_best_weights_is_valid():
  config = config_lib.default_config()
  config.early_stopping = ml_collections.ConfigDict(dict(monitor="val_accuracy", patience=2))
  config_lib.validate(config)  # the run evaluates the best epoch, as before the field
  config.early_stopping = ml_collections.ConfigDict(dict(monitor="val_accuracy", patience=2,
                                                         restore_best_weights="yes"))
  with pytest.raises(ValueError, match="config.early_stopping.restore_best_weights should be a bool"):
    config_lib.validate(config)
