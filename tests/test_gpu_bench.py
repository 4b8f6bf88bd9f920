"""bench/gpu.py --tiny: the GPU benchmark's code runs on CPU at toy sizes, with the peers and without them, and
writes its JSON and Markdown where --out says. (The figures themselves come from a run on a GPU.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
  """This session's environment with one CPU device (conftest forces four for the in-process tests) and the
  test session's persistent XLA cache, so a second run reuses the first one's compiled steps."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith("--xla_force_host_platform_device_count"))
  env.update(JAX_COMPILATION_CACHE_DIR=str(Path(os.environ.get("TMPDIR", "/tmp")) / "cnnjax-test-xla-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", CUDA_VISIBLE_DEVICES="", **extra)
  return env


def _run(out: Path, *args, **env):
  result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--out", str(out), *args],
                          cwd=out.parent, env=_env(**env), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text(), result


def _check_cnnjax_rows(report):
  train = {row["framework"]: row for row in report["train"]}
  for label in ("cnnjax float32", "cnnjax bfloat16"):
    row = train[label]
    assert row["error"] is None and row["images/s"] > 0 and row["GFLOP/step"] > 0 and row["compile s"] > 0, row
  explain = {(row["method"], row["framework"]): row for row in report["explain"]}
  for method in ("saliency", "gradcam", "occlusion"):
    assert explain[(method, "cnnjax")]["images/s"] > 0 and explain[(method, "cnnjax")]["error"] is None
  assert report["device"]["platform"] == "cpu" and report["device"]["bf16_peak_flops"] is None
  assert report["settings"]["model"] == "resnet18" and report["settings"]["batch"] == 4
  return train, explain


def test_tiny_run_with_the_peers(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  report, markdown, _ = _run(tmp_path / "tiny")
  train, explain = _check_cnnjax_rows(report)
  for label in ("torch float32 channels_last", "torch AMP bf16 channels_last"):
    assert train[label]["error"] is None and train[label]["images/s"] > 0, train[label]
  assert len({row["params"] for row in train.values()}) == 1  # the same architecture on both sides
  assert explain[("saliency", "cnnjax")]["max |logit diff|"] < 1e-3  # the same weights on both sides
  peers = {framework for _, framework in explain} - {"cnnjax"}
  expected = ({"captum"} if not any("captum" in s for s in report["skipped"]) else set()) | (
      {"pytorch-grad-cam"} if not any("pytorch_grad_cam" in s for s in report["skipped"]) else set())
  assert peers == expected
  for (method, framework), row in explain.items():
    assert row["error"] is None, (method, framework, row["error"])
    if framework != "cnnjax":
      assert row["cnnjax / this"] > 0
  assert "### Training step" in markdown and "### Explainers" in markdown and "cnnjax bfloat16" in markdown


def test_tiny_run_without_torch_skips_the_peers(tmp_path):
  """torch made unimportable (a stand-in package that raises ImportError, first on the path): only cnnjax runs."""
  blocker = tmp_path / "blocked" / "torch"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
  report, markdown, _ = _run(tmp_path / "no_torch", PYTHONPATH=str(blocker.parent))
  train, explain = _check_cnnjax_rows(report)
  assert set(train) == {"cnnjax float32", "cnnjax bfloat16"}
  assert {framework for _, framework in explain} == {"cnnjax"}
  assert any(s.startswith("torch (ImportError: torch is blocked") for s in report["skipped"]), report["skipped"]
  assert "Skipped: torch" in markdown
