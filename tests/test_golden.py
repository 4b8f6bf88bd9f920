"""Behaviour unchanged by refactors: training, the LR finder, transfer learning and every explainer reproduce the
golden runs recorded before the #13 redesign (tests/golden/record.py says how they were made). Losses, accuracies
and learning rates to 2e-3; maps to a correlation of 0.9999 per image."""
import json
from pathlib import Path

import numpy as np
import pytest

from golden import record

GOLDEN = Path(__file__).resolve().parent / "golden"
TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def golden(shared_dir):
  del shared_dir  # the runs read ../shared
  return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("CNNJAX_CACHE_DIR", str(tmp_path / "cache"))


def assert_runs_match(actual: dict, expected: dict, where: str) -> None:
  assert len(actual["history"]) == len(expected["history"]), where
  for epoch, (got, want) in enumerate(zip(actual["history"], expected["history"])):
    assert set(got) == set(want), f"{where} epoch {epoch}"
    for key, value in want.items():
      assert got[key] == pytest.approx(value, abs=TOLERANCE), f"{where} epoch {epoch} {key}"
  for key, value in expected["eval"].items():
    assert actual["eval"][key] == pytest.approx(value, abs=TOLERANCE), f"{where} eval {key}"


def test_training_runs_match_the_golden_runs(golden, tmp_path):
  actual = record.training_runs(tmp_path)
  for model in ("simple_cnn", "simple_cnn_bn"):
    assert_runs_match(actual[model], golden["training"][model], model)
    assert [r["step"] for r in actual[model]["history"]] == [20, 40], "2 epochs x 20 steps"


def test_lr_find_matches_the_golden_sweep(golden, tmp_path):
  actual, expected = record.lr_find_run(tmp_path), golden["lr_find"]
  assert actual["stopped"] == expected["stopped"]
  for key in ("lrs", "losses", "smoothed_losses"):
    np.testing.assert_allclose(actual[key], expected[key], atol=TOLERANCE, rtol=0, err_msg=key)
  assert actual["suggestion"] == pytest.approx(expected["suggestion"], rel=1e-6)


def test_transfer_runs_match_the_golden_runs(golden, tmp_path):
  actual, expected = record.transfer_runs(tmp_path), golden["transfer"]
  for name in ("bottleneck", "bottleneck_no_dropout"):
    assert_runs_match(actual[name], expected[name], name)
  for phase in ("phase1", "phase2"):
    assert_runs_match(actual["finetune"][phase], expected["finetune"][phase], f"finetune {phase}")
  assert actual["finetune"]["eval"] == pytest.approx(expected["finetune"]["eval"], abs=TOLERANCE)


def _per_image_correlation(got: np.ndarray, want: np.ndarray) -> np.ndarray:
  got, want = got.reshape(len(got), -1).astype(np.float64), want.reshape(len(want), -1).astype(np.float64)
  got, want = got - got.mean(1, keepdims=True), want - want.mean(1, keepdims=True)
  return (got * want).sum(1) / np.sqrt((got ** 2).sum(1) * (want ** 2).sum(1))


# Outputs with one value per image (or per layer and image): compared as numbers, not as maps.
SCALARS = ("deletion", "insertion", "randomization")


def test_every_explainer_matches_its_golden_output(shared_dir):
  del shared_dir
  expected = dict(np.load(GOLDEN / "explainers.npz"))
  actual = record.explainer_maps()
  assert set(actual) == set(expected)
  for name, want in expected.items():
    got = actual[name]
    assert got.shape == want.shape, name
    if name in SCALARS:
      np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=name)
    else:
      assert _per_image_correlation(got, want).min() >= 0.9999, name
  np.testing.assert_allclose(actual["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
