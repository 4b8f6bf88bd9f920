"""TensorBoard events of a train.py run: epoch scalars, the config as hparams and Grad-CAM overlays."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnjax.train import loop
import conftest


def _events(workdir: Path):
  """Every summary value of the workdir's event files as (step, value)."""
  import tensorflow as tf
  return [(event.step, value) for events in sorted(workdir.glob("events.out.tfevents.*"))
          for event in tf.compat.v1.train.summary_iterator(str(events)) for value in event.summary.value]


def test_events_hold_scalars_hparams_and_gradcam_overlays(image_folder, tmp_path):
  import tensorflow as tf
  from tensorboard.plugins.hparams import plugin_data_pb2
  workdir = tmp_path / "run"
  config = conftest.tiny_config(image_folder, num_epochs=2, validation_split=0.25, tensorboard_explain_images=3)
  loop.train_and_evaluate(config, str(workdir))
  events = _events(workdir)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [record["step"] for record in records]

  scalars = {(value.tag, step): float(tf.make_ndarray(value.tensor)) for step, value in events
             if value.metadata.plugin_data.plugin_name == "scalars"}
  for tag in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
    for record in records:
      assert scalars[(tag, record["step"])] == pytest.approx(record[tag], rel=1e-6), tag

  hparams = {}
  for _, value in events:
    if value.metadata.plugin_data.plugin_name == "hparams":
      content = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
      hparams.update(content.session_start_info.hparams)
  assert hparams["model"].string_value == "simple_cnn"
  assert hparams["learning_rate"].number_value == pytest.approx(1e-3)
  assert hparams["augment.horizontal_flip"].bool_value is True  # nested fields, flattened
  assert hparams["early_stopping.monitor"].string_value == "val_loss"
  assert hparams["tensorboard_explain_images"].number_value == 3
  assert not any(name.startswith("class_names") for name in hparams)

  images = [(step, value) for step, value in events if value.metadata.plugin_data.plugin_name == "images"]
  assert [(step, value.tag) for step, value in images] == [(step, "gradcam") for step in steps]
  for _, value in images:
    width, height, *pngs = tf.make_ndarray(value.tensor)
    assert (int(width), int(height), len(pngs)) == (16, 16, 3)
    overlay = np.asarray(Image.open(io.BytesIO(pngs[0])))
    assert overlay.shape == (16, 16, 3) and overlay.std() > 0
