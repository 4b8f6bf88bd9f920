"""explain.py --dataset / cnnjax.apps.dataset: every image of a dataset, sharded over devices and processes, maps in
zarr, per-image metrics, a summary; exact resume after SIGKILL; bad input in one line."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import data as data_lib
from cnnjax import explain
from cnnjax.apps import dataset, report
from cnnjax.explain import registry
from conftest import colour_folder, one_line_error, tiny_config

REPO = Path(__file__).resolve().parents[1]
METHODS = ["saliency", "gradcam"]
BATCH = 8  # 20 images: chunks of 8, 8 and 4 (padded)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
  """3 classes of small JPEGs, 20 images, one of them not an image at all."""
  root = colour_folder(tmp_path_factory.mktemp("jpegs"), per_class=(7, 6, 6), seed=1, name="{}.jpg", quality=90)
  (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
  return root


@pytest.fixture(scope="module")
def run_dir(jpeg_folder, tmp_path_factory) -> Path:
  from cnnjax.train import loop
  workdir = tmp_path_factory.mktemp("run") / "simple_cnn"
  loop.train_and_evaluate(tiny_config(jpeg_folder, num_epochs=1, steps_per_epoch=1, validation_split=0.0),
                          str(workdir))
  return workdir


@pytest.fixture(scope="module")
def source(run_dir):
  return report.load_workdir(str(run_dir))


def run_job(source, folder, out, **options):
  options = {"methods": METHODS, "batch_size": BATCH, "print_fn": lambda line: None, **options}
  return dataset.explain_dataset(source, f"folder:{folder}", out_dir=str(out), **options)


def explain_py(*args, env=None, **popen):
  command = [sys.executable, "explain.py", *map(str, args)]
  return subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **popen)


def finished(process, timeout=600):
  stdout, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def arrays(out):
  return {method: dataset.read_maps(str(out), method) for method in METHODS}


@pytest.fixture(scope="module")
def reference(source, jpeg_folder, tmp_path_factory):
  """One uninterrupted job on the 4 virtual devices the tests run with."""
  out = tmp_path_factory.mktemp("reference") / "out"
  result = run_job(source, jpeg_folder, out)
  return out, result


def test_every_image_gets_maps_metrics_a_summary_and_a_figure(source, jpeg_folder, reference):
  out, result = reference
  listing = dataset.open_dataset(f"folder:{jpeg_folder}", image_size=16, channels=3)
  names = (out / "images.txt").read_text().splitlines()
  assert names == list(listing.names) and len(names) == 20 and names[0] == os.path.join(jpeg_folder, "blue/0.jpg")
  assert result["computed_chunks"] == 3 and len(result["chunk_seconds"]) == 3
  maps = arrays(out)
  assert maps["saliency"].shape == (20, 16, 16, 3) and maps["gradcam"].shape == (20, 16, 16)

  # The same numbers as the explainers and metrics called on the whole dataset at once.
  images, labels, decoded = listing.read(0, 20)
  broken = names.index(os.path.join(jpeg_folder, "red/broken.jpg"))
  assert not decoded[broken] and decoded.sum() == 19
  inputs = data_lib.preprocess(jnp.asarray(images[decoded], jnp.float32), **source.preprocess)
  targets = jnp.argmax(source.model.apply(source.variables, inputs, train=False), axis=-1)
  records = dataset.read_records(str(out))
  assert [record["path"] for record in records] == names
  assert records[broken] == {"index": broken, "path": names[broken], "label": 2, "decoded": False}
  kept = [record for record in records if record["decoded"]]
  np.testing.assert_array_equal([record["target"] for record in kept], np.asarray(targets))
  for method in METHODS:
    expected = np.asarray(registry.METHODS[method](source.model, source.variables, inputs, targets))
    assert np.isnan(maps[method][broken]).all()
    np.testing.assert_allclose(maps[method][decoded], expected, rtol=1e-4, atol=1e-6)
    scores = explain.deletion_insertion(source.model, source.variables, inputs, targets, expected)
    np.testing.assert_allclose([record["methods"][method]["deletion_auc"] for record in kept],
                               np.asarray(scores["deletion"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([record["methods"][method]["insertion_auc"] for record in kept],
                               np.asarray(scores["insertion"]), rtol=1e-4, atol=1e-6)

  summary = json.loads((out / "summary.json").read_text())
  assert summary["images"] == 20 and summary["decoded"] == 19 and summary["failed_to_decode"] == [names[broken]]
  for method in METHODS:
    faithfulness = [r["methods"][method]["insertion_auc"] - r["methods"][method]["deletion_auc"] for r in kept]
    assert summary["methods"][method]["best"][0] == kept[int(np.argmax(faithfulness))]["path"]
    assert summary["methods"][method]["worst"][0] == kept[int(np.argmin(faithfulness))]["path"]
    assert summary["methods"][method]["deletion_auc"]["mean"] == pytest.approx(
        np.mean([r["methods"][method]["deletion_auc"] for r in kept]))
  assert (out / "summary.png").stat().st_size > 5000


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def test_one_device_and_two_processes_give_the_maps_of_four_devices(run_dir, jpeg_folder, reference, tmp_path):
  common = ["--workdir", run_dir, "--dataset", f"folder:{jpeg_folder}", "--methods", ",".join(METHODS),
            "--batch_size", BATCH]
  one_device = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  address = f"127.0.0.1:{free_port()}"
  processes = [explain_py(*common, "--out", tmp_path / "two", "--distributed", f"--coordinator_address={address}",
                          "--num_processes=2", f"--process_id={index}", env=one_device) for index in (1, 0)]
  single = explain_py(*common, "--out", tmp_path / "one", env=one_device)
  for process in [single, *processes]:
    finished(process)
  expected = arrays(reference[0])
  for name in ("one", "two"):
    for method, maps in arrays(tmp_path / name).items():
      np.testing.assert_allclose(maps, expected[method], rtol=1e-4, atol=1e-6, err_msg=f"{name}: {method}")
    for got, want in zip(dataset.read_records(str(tmp_path / name)), dataset.read_records(str(reference[0]))):
      assert got.keys() == want.keys() and got["path"] == want["path"]
      if want["decoded"]:
        for method in METHODS:
          for key, value in want["methods"][method].items():
            assert got["methods"][method][key] == pytest.approx(value, rel=1e-4, abs=1e-6)


def assert_same_job(out, reference_out):
  for method, maps in arrays(reference_out).items():
    np.testing.assert_array_equal(dataset.read_maps(str(out), method), maps)  # NaN rows compare equal here
  assert (out / "metrics.jsonl").read_text() == (reference_out / "metrics.jsonl").read_text()
  assert (out / "summary.json").read_text() == (reference_out / "summary.json").read_text()


def test_sigkill_between_a_chunks_writes_and_its_record_then_rerun_is_the_uninterrupted_job(
    run_dir, source, jpeg_folder, reference, tmp_path):
  out = tmp_path / "out"
  # Dies after chunk 2's maps and metrics lines are written, before progress.json records it.
  script = ("import os, signal, sys; sys.path.insert(0, '.'); from cnnjax.apps import dataset, report\n"
            "record = dataset._Writer.record_progress\n"
            "def dying(self, done):\n"
            "  if done == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            "  record(self, done)\n"
            "dataset._Writer.record_progress = dying\n"
            f"dataset.explain_dataset(report.load_workdir({str(run_dir)!r}), 'folder:{jpeg_folder}', "
            f"methods={METHODS!r}, out_dir={str(out)!r}, batch_size={BATCH})\n")
  killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert json.loads((out / "progress.json").read_text())["chunks_done"] == 1
  assert len((out / "metrics.jsonl").read_text().splitlines()) == 16  # chunk 2's lines, not yet recorded

  result = run_job(source, jpeg_folder, out)
  assert result["computed_chunks"] == 2  # chunk 1 is not recomputed
  assert_same_job(out, reference[0])


def test_sigkill_at_a_random_moment_then_rerun_is_the_uninterrupted_job(run_dir, source, jpeg_folder, reference,
                                                                        tmp_path):
  out = tmp_path / "out"
  process = explain_py("--workdir", run_dir, "--dataset", f"folder:{jpeg_folder}", "--methods", ",".join(METHODS),
                       "--batch_size", 4, "--out", out)  # 5 chunks
  started = time.time()
  while process.poll() is None and not (out / "progress.json").exists() and time.time() - started < 300:
    time.sleep(0.01)
  process.kill()
  process.communicate()
  done = json.loads((out / "progress.json").read_text())["chunks_done"]
  assert done < 5, "the job finished before the kill: make it longer"
  rerun = finished(explain_py("--workdir", run_dir, "--dataset", f"folder:{jpeg_folder}", "--methods",
                              ",".join(METHODS), "--batch_size", 4, "--out", out))
  assert f"chunk {done + 1}/5" in rerun and f"chunk {done}/5" not in rerun
  uninterrupted = tmp_path / "uninterrupted"
  run_job(source, jpeg_folder, uninterrupted, batch_size=4)
  assert_same_job(out, uninterrupted)


def test_a_tfds_dataset_streams_in_its_stored_order(source, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    result = dataset.explain_dataset(source, "cifar10", methods=["gradcam"], out_dir=str(tmp_path), batch_size=8,
                                     print_fn=lambda line: None)
    listing = dataset.open_dataset("cifar10", image_size=16, channels=3)
    images, labels, decoded = listing.read(0, 12)
    first, first_labels, _ = listing.read(4, 6)  # reading again, elsewhere, restarts the stream there
  assert (tmp_path / "images.txt").read_text().splitlines() == [f"cifar10/train/{i}" for i in range(12)]
  assert result["summary"]["images"] == 12 and decoded.all()
  np.testing.assert_array_equal(first, images[4:6])
  np.testing.assert_array_equal(first_labels, labels[4:6])
  assert [record["label"] for record in dataset.read_records(str(tmp_path))] == labels.tolist()
  inputs = data_lib.preprocess(jnp.asarray(images, jnp.float32), **source.preprocess)
  targets = jnp.argmax(source.model.apply(source.variables, inputs, train=False), axis=-1)
  np.testing.assert_allclose(dataset.read_maps(str(tmp_path), "gradcam"),
                             registry.METHODS["gradcam"](source.model, source.variables, inputs, targets),
                             rtol=1e-4, atol=1e-6)


# --- bad input: one line each, and nothing written that a rerun would trust ------------------------------------

def test_a_dataset_that_does_not_exist_is_one_line_and_writes_nothing(source, tmp_path, monkeypatch):
  out = tmp_path / "out"
  one_line_error(lambda: run_job(source, tmp_path / "missing", out), "missing does not exist")
  one_line_error(lambda: dataset.explain_dataset(source, "cifar100", methods=METHODS, out_dir=str(out)),
                 "unknown dataset 'cifar100'")
  tfds = pytest.importorskip("tensorflow_datasets")

  def offline(*args, **kwargs):
    raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'\nretrying")

  monkeypatch.setattr(tfds, "load", offline)
  monkeypatch.setattr(tfds, "data_source", offline)
  one_line_error(lambda: dataset.explain_dataset(source, "cifar10", methods=METHODS, out_dir=str(out),
                                                 data_dir=str(tmp_path)), "tfds could not")
  assert not out.exists()


def test_an_unwritable_out_is_one_line(source, jpeg_folder, tmp_path, monkeypatch):
  from reliability import faults
  (tmp_path / "file").write_text("")
  one_line_error(lambda: run_job(source, jpeg_folder, tmp_path / "file" / "out"), "cannot write to --out",
                 "pass a writable directory")
  with faults.failing_writes(monkeypatch, tmp_path / "readonly"):
    one_line_error(lambda: run_job(source, jpeg_folder, tmp_path / "readonly"), "cannot write to --out",
                   "Read-only file system")
  assert not (tmp_path / "readonly").exists()


def snapshot(out):
  return {path: path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_an_out_dir_of_another_run_is_refused_and_left_as_it_was(source, jpeg_folder, reference, tmp_path):
  out = tmp_path / "out"
  shutil.copytree(reference[0], out)
  before = snapshot(out)
  one_line_error(lambda: run_job(source, jpeg_folder, out, methods=["saliency", "layercam"]),
                 "holds explanations of another run", "methods")
  one_line_error(lambda: run_job(source, jpeg_folder, out, limit_per_class=2), "another run (other images)")
  one_line_error(lambda: run_job(source, jpeg_folder, out, batch_size=4), "batch_size 8 there, 4 now")
  assert snapshot(out) == before

  # A zarr store of another run put into this run's directory, and our file names without run.json.
  other = tmp_path / "other"
  run_job(source, jpeg_folder, other, methods=["gradcam"], target="label")
  shutil.rmtree(out / "gradcam.zarr")
  shutil.copytree(other / "gradcam.zarr", out / "gradcam.zarr")
  one_line_error(lambda: run_job(source, jpeg_folder, out), "gradcam.zarr is a zarr store of another run")
  (out / "run.json").unlink()
  one_line_error(lambda: run_job(source, jpeg_folder, out), "but no run.json")


def test_bad_settings_are_one_line(source, jpeg_folder, tmp_path):
  out = tmp_path / "out"
  one_line_error(lambda: run_job(source, jpeg_folder, out, batch_size=6), "multiple of the 4 devices")
  one_line_error(lambda: run_job(source, jpeg_folder, out, methods=["deletion"]), "unknown method 'deletion'")
  one_line_error(lambda: run_job(source, jpeg_folder, out, metrics=["auc"]), "unknown metric(s) auc")
  one_line_error(lambda: run_job(source, jpeg_folder, out, target="zebra"), "unknown target class 'zebra'",
                 "or label")
  assert not out.exists()


def test_explain_py_refuses_images_with_dataset(run_dir, jpeg_folder, tmp_path):
  process = explain_py("--workdir", run_dir, "--dataset", f"folder:{jpeg_folder}", "--images",
                       jpeg_folder / "red" / "0.jpg", "--out", tmp_path / "out")
  _, stderr = process.communicate(timeout=600)
  assert process.returncode != 0
  assert stderr.strip().splitlines()[-1] == ("error: --dataset explains a whole dataset; drop --images / --serve "
                                             "(or --dataset)")


def test_mufidelity_and_infidelity_per_image_and_the_first_metric_ranks(source, jpeg_folder, tmp_path):
  result = run_job(source, jpeg_folder, tmp_path, methods=["gradcam"], metrics=["infidelity", "mufidelity"])
  listing = dataset.open_dataset(f"folder:{jpeg_folder}", image_size=16, channels=3)
  images, _, decoded = listing.read(0, 20)
  inputs = data_lib.preprocess(jnp.asarray(images[decoded], jnp.float32), **source.preprocess)
  targets = jnp.argmax(source.model.apply(source.variables, inputs, train=False), axis=-1)
  maps = registry.METHODS["gradcam"](source.model, source.variables, inputs, targets)
  kept = [record for record in dataset.read_records(str(tmp_path)) if record["decoded"]]
  # MuFidelity is a rank correlation over 200 subsets: rounding (another batch, other shards) can swap two nearly
  # equal drops, which moves it by ~1e-4.
  for name, metric, atol in (("infidelity", explain.infidelity, 1e-6), ("mufidelity", explain.mufidelity, 5e-4)):
    np.testing.assert_allclose([record["methods"]["gradcam"][name] for record in kept],
                               np.asarray(metric(source.model, source.variables, inputs, targets, maps)),
                               rtol=1e-4, atol=atol)
  infidelities = [record["methods"]["gradcam"]["infidelity"] for record in kept]
  assert result["summary"]["ranked_by"] == "infidelity"
  assert result["summary"]["methods"]["gradcam"]["best"][0] == kept[int(np.argmin(infidelities))]["path"]
