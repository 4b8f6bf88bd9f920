"""The smile detector: celeb_a faces labelled by an attribute (tfds mock data), binary precision/recall/F1 in
eval.json, and configs/smile_cnn.py end to end."""
import json

import numpy as np
import pytest
from PIL import Image

from cnnjax import data
from cnnjax.data import sources
from cnnjax.train import evaluation
from cnnjax.train import loop
from configs import smile_cnn

tfds = pytest.importorskip("tensorflow_datasets")


def test_binary_report_from_a_hand_computed_confusion_matrix():
  # 100 faces: 60 not smiling (50 right, 10 called smiling), 40 smiling (35 right, 5 missed).
  report = evaluation.classification_report(np.array([[50, 10], [5, 35]]), ["not smiling", "smiling"])
  assert report["positive_class"] == "smiling"
  assert report["precision"] == pytest.approx(35 / 45)  # TP / (TP + FP)
  assert report["recall"] == pytest.approx(35 / 40)  # TP / (TP + FN)
  assert report["f1"] == pytest.approx(70 / 85)  # 2 TP / (2 TP + FP + FN)
  assert report["per_class"]["not smiling"] == pytest.approx(
      {"precision": 50 / 55, "recall": 50 / 60, "f1": 100 / 115, "support": 60})
  assert report["macro_f1"] == pytest.approx((70 / 85 + 100 / 115) / 2)
  assert report["confusion_matrix"] == [[50, 10], [5, 35]]

  never_smiling = evaluation.classification_report(np.array([[3, 0], [2, 0]]), ["not smiling", "smiling"])
  assert (never_smiling["precision"], never_smiling["recall"], never_smiling["f1"]) == (0.0, 0.0, 0.0)
  assert "precision" not in evaluation.classification_report(np.eye(3), ["a", "b", "c"])


def test_face_crop_is_the_centred_148_square_of_an_aligned_face():
  rows, columns = np.mgrid[:218, :178]
  face = Image.fromarray(np.stack([rows, columns, rows * 0], -1).astype(np.uint8))
  cropped = np.asarray(sources.face_crop(face))
  assert cropped.shape == (148, 148, 3)
  assert (cropped[0, 0, 0], cropped[0, 0, 1]) == (35, 15)  # top-left corner: row (218 - 148) / 2, column 15
  assert (cropped[-1, -1, 0], cropped[-1, -1, 1]) == (182, 162)


def _mock_smiling_labels():
  """The Smiling attribute of every mock training example, read straight from tfds."""
  dataset = tfds.load("celeb_a", split="train", shuffle_files=False)
  return np.array([bool(example["attributes"]["Smiling"]) for example in tfds.as_numpy(dataset)], np.int32)


def test_celeb_a_splits_are_cropped_faces_labelled_by_the_attribute():
  with tfds.testing.mock_data(num_examples=10):
    splits = data.load("celeb_a:Smiling", image_size=16, validation_split=0.3, seed=5)
    labels = _mock_smiling_labels()
    limited = data.load("celeb_a:Smiling", image_size=16, limit_per_class=2)
  assert splits.class_names == ["not smiling", "smiling"]
  np.testing.assert_array_equal(splits.train.labels, labels)
  for images in (splits.train, splits.validation, splits.test):
    # celeb_a's own splits, whole (mock data has 10 per split): validation_split carves nothing out of train.
    assert images.images.shape == (10, 16, 16, 3) and images.images.dtype == np.uint8
  first_two_per_class = np.sort(np.concatenate([np.flatnonzero(labels == c)[:2] for c in (0, 1)]))
  np.testing.assert_array_equal(limited.train.labels, labels[first_two_per_class])
  np.testing.assert_array_equal(limited.train.images, splits.train.images[first_two_per_class])
  assert len(limited.validation) <= 4 and len(limited.test) <= 4


def test_unknown_attribute_fails_in_one_line_naming_the_valid_ones():
  with pytest.raises(ValueError, match="celeb_a has no attribute 'Smile'; .*Smiling") as error:
    data.load("celeb_a:Smile", image_size=16)
  assert "\n" not in str(error.value)


def test_smile_config_trains_on_mock_celeb_a_and_reports_binary_metrics(tmp_path):
  config = smile_cnn.get_config()
  assert (config.model, config.dataset, config.num_classes, config.image_size) == (
      "smile_cnn", "celeb_a:Smiling", 2, 64)
  config.update(num_epochs=1, steps_per_epoch=2, batch_size=8, eval_batch_size=8)
  workdir = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=12):
    loop.train_and_evaluate(config, str(workdir))
  results = json.loads((workdir / "eval.json").read_text())
  assert results["split"] == "test" and results["count"] == 12
  assert results["class_names"] == ["not smiling", "smiling"] and results["positive_class"] == "smiling"
  assert {"precision", "recall", "f1", "per_class", "macro_f1"} <= set(results)
  confusion = np.array(results["confusion_matrix"])
  assert confusion.shape == (2, 2) and confusion.sum() == 12
  assert results["precision"] == pytest.approx(confusion[1, 1] / max(confusion[:, 1].sum(), 1))
  assert results["recall"] == pytest.approx(confusion[1, 1] / max(confusion[1].sum(), 1))
  assert (workdir / "confusion_matrix.png").is_file()
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert "val_loss" in history[0]  # celeb_a's validation split, used for model selection
