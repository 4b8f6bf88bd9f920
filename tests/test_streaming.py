"""Streaming input (cnnjax.data.streaming): the same batches as in memory, each process its own share, undecodable
files skipped and counted, exact resume from a checkpoint's reader position (kill -9 included), tfds data
sources, never a fork, and config.in_memory_limit_gb choosing the path."""
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax import data
from cnnjax.data import streaming
from cnnjax.train import bottleneck
from cnnjax.train import config as config_lib
from cnnjax.train import hooks
from cnnjax.train import loop
from cnnjax.train import weights
from conftest import colour_folder, one_line_error, tiny_config

REPO = Path(__file__).resolve().parents[1]
# How Python prints a warning: "path/to/module.py:66: RuntimeWarning: message".
PYTHON_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ", re.MULTILINE)


def _folder(root: Path, per_class: int = 12, broken: bool = False) -> Path:
  """Three classes of colour-dominated noise PNGs; `broken` adds one undecodable file to 'red'."""
  colour_folder(root, per_class=per_class, size=10, seed=1, name="{:02d}.png")
  if broken:
    (root / "red" / "00_broken.png").write_bytes(b"\x89PNG truncated")
  return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
  return _folder(tmp_path_factory.mktemp("streaming") / "colours")


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory) -> Path:
  return _folder(tmp_path_factory.mktemp("streaming_broken") / "colours", broken=True)


def _zip_of(folder: Path, path: Path) -> Path:
  with zipfile.ZipFile(path, "w") as archive:
    for file in sorted(folder.rglob("*.png")):
      archive.write(file, f"train/{file.relative_to(folder).as_posix()}")
  return path


def _load(dataset: str, limit: float, **options) -> data.Splits:
  return data.load(dataset, image_size=8, cache_dir="", in_memory_limit_gb=limit, **options)


def _assert_same_batches(first, second):
  first, second = list(first), list(second)
  assert len(first) == len(second) > 0
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_streamed_batches_are_the_in_memory_batches_for_every_process(folder, tmp_path, kind):
  source = folder if kind == "folder" else _zip_of(folder, tmp_path / "colours.zip")
  streamed, in_memory = _load(f"folder:{source}", 0), _load(f"folder:{source}", 2)
  assert isinstance(streamed.train, data.StreamingSet) and isinstance(in_memory.train, data.ImageSet)
  assert streamed.class_names == in_memory.class_names == ["blue", "green", "red"]
  for process in range(2):
    options = dict(batch_size=6, seed=3, process_index=process, process_count=2)
    for epoch in (0, 1):
      _assert_same_batches(data.batches(streamed.train, epoch=epoch, shuffle=True, **options),
                           data.batches(in_memory.train, epoch=epoch, shuffle=True, **options))
    _assert_same_batches(data.batches(streamed.validation, epoch=0, shuffle=False, **options),
                         data.batches(in_memory.validation, epoch=0, shuffle=False, **options))
  np.testing.assert_array_equal(data.head(streamed.train, 5).images, in_memory.train.images[:5])


def test_in_memory_limit_decides_which_datasets_stream(folder):
  # 36 images of 8x8x3 = 6,912 bytes.
  assert isinstance(_load(f"folder:{folder}", 7000e-9, validation_split=0).train, data.ImageSet)
  assert isinstance(_load(f"folder:{folder}", 6000e-9, validation_split=0).train, data.StreamingSet)
  assert isinstance(_load(f"folder:{folder}", 6000e-9, limit_per_class=10, validation_split=0).train,
                    data.ImageSet)  # limit_per_class counts: 30 images (5,760 bytes) fit
  message = one_line_error(lambda: _load(f"folder:{folder}", -1))
  assert "in_memory_limit_gb" in message and ">= 0" in message
  config = tiny_config(folder, in_memory_limit_gb=-0.5)
  assert "config.in_memory_limit_gb must be >= 0" in one_line_error(lambda: config_lib.validate(config))


def test_undecodable_files_are_skipped_counted_and_replaced(broken_folder):
  splits = _load(f"folder:{broken_folder}", 0, validation_split=0)
  train = splits.train
  assert len(train) == 37  # listed, the broken file included
  reader = data.batches(train, batch_size=6, seed=0, epoch=0, shuffle=True)
  batches = list(reader)
  assert len(batches) == 6 and all(batch["images"].shape == (6, 8, 8, 3) for batch in batches)
  broken = train.source.files.index("red/00_broken.png")
  assert train.skipped == {broken}
  # The epoch read one image past its 36 batch slots to replace the broken one, unless the broken file fell in
  # the dropped remainder (position 36) of this epoch's order.
  epoch_order = data.pipeline.epoch_permutation(37, 0, 0)
  assert reader.position == (37 if list(epoch_order).index(broken) < 36 else 36)
  seen = np.concatenate([batch["labels"] for batch in batches])
  assert len(seen) == 36
  # Evaluation keeps the broken file's place, masked out.
  evaluation = list(data.batches(train, batch_size=8, seed=0, epoch=0, shuffle=False))
  mask = np.concatenate([batch["mask"] for batch in evaluation])
  assert mask.sum() == 36 and mask[broken] == 0


def test_a_reader_resumed_at_its_saved_position_reads_what_the_uninterrupted_one_read(broken_folder):
  train = _load(f"folder:{broken_folder}", 0, validation_split=0).train
  options = dict(batch_size=4, shuffle=True, process_index=1, process_count=2)
  for epoch in range(4):  # epochs where the broken file comes early and late in process 1's share
    full = data.batches(train, seed=0, epoch=epoch, **options)
    expected = [next(full) for _ in range(3)]
    position, rest = full.position, list(full)
    resumed = data.batches(train, seed=0, epoch=epoch, start_batch=3, position=position, **options)
    _assert_same_batches(resumed, rest)
    assert expected  # the first batches were read before the position was taken


def test_streamed_training_equals_in_memory_training(folder, tmp_path):
  results = {}
  for limit in (0.0, 2.0):
    config = tiny_config(folder, num_epochs=2, in_memory_limit_gb=limit)
    loop.train_and_evaluate(config, str(tmp_path / str(limit)))
    results[limit] = weights.restore(str(tmp_path / str(limit)))[1]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), *results.values())


def test_mid_epoch_checkpoints_hold_the_reader_positions_and_old_records_restore(broken_folder, tmp_path):
  config = tiny_config(broken_folder, num_epochs=1, batch_size=4, eval_batch_size=4, checkpoint_every_steps=1,
                       keep_checkpoints=20, in_memory_limit_gb=0.0)
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  records = {}
  for step_dir in sorted((tmp_path / "run" / "checkpoints" / "latest").iterdir()):
    records[int(step_dir.name)] = json.loads((step_dir / "record" / "metadata").read_text())
  steps_per_epoch = max(records)
  mid = [record["input"] for step, record in records.items() if step < steps_per_epoch]
  assert [state["batch"] for state in mid] == list(range(1, steps_per_epoch))
  positions = [state["positions"][0] for state in mid]
  assert positions[-1] >= 4 * mid[-1]["batch"]
  assert "input" not in records[steps_per_epoch]  # an epoch's end needs none
  # A record from before streaming (no 'input') places the data by the step alone.
  assert hooks.Progress.from_record({"history": [], "epoch_metrics": {"sums": {}, "count": 0}}).input is None
  batches = loop.TrainBatches(config, data.ImageSet(np.zeros((8, 8, 8, 3), np.uint8), np.zeros(8, np.int32)), None)
  assert batches.state() is None
  # A saved config without in_memory_limit_gb (written before it existed) resumes as the default.
  saved = json.loads(config_lib.to_json(config_lib.default_config()))
  del saved["in_memory_limit_gb"]
  config_lib.check_resumable(saved, config_lib.default_config().to_dict())


def test_a_reader_state_saved_by_other_processes_is_refused_unless_nothing_was_skipped(folder):
  config = tiny_config(folder, batch_size=4)
  train = _load(f"folder:{folder}", 0, validation_split=0).train
  clean = loop.TrainBatches(config, train, None, resume={"epoch": 0, "batch": 2, "positions": [4, 4]})
  assert clean._position(0, 2) is None  # 2 batches of 2 per process: nothing skipped, the batch places it
  skipped = loop.TrainBatches(config, train, None, resume={"epoch": 0, "batch": 2, "positions": [5, 4]})
  assert "resume it with 2 processes" in one_line_error(lambda: skipped._position(0, 2))


def test_read_chunks_gives_every_image_in_order_with_its_name(broken_folder):
  every, class_names = streaming.open_images(f"folder:{broken_folder}", image_size=8)
  assert class_names == ["blue", "green", "red"] and len(every) == 37
  chunks = list(streaming.read_chunks(every, 10))
  assert [len(chunk.positions) for chunk in chunks] == [10, 10, 10, 7]
  names = [name for chunk in chunks for name in chunk.names]
  assert names == [str(broken_folder / file) for file in every.source.files]
  ok = np.concatenate([chunk.ok for chunk in chunks])
  assert not ok[every.source.files.index("red/00_broken.png")] and ok.sum() == 36
  resumed = list(streaming.read_chunks(every, 10, start=20))
  np.testing.assert_array_equal(resumed[0].images, chunks[2].images)
  assert "0 <= start <= stop" in one_line_error(lambda: next(streaming.read_chunks(every, 10, start=40)))


def test_streaming_never_forks(folder, monkeypatch):
  monkeypatch.setattr(os, "fork", lambda: pytest.fail("streaming forked a process"))
  train = _load(f"folder:{folder}", 0, validation_split=0).train
  assert sum(len(batch["labels"]) for batch in data.batches(train, batch_size=6, seed=0, epoch=0, shuffle=True)) == 36


def test_bottleneck_runs_refuse_a_streamed_dataset_in_one_line(folder):
  splits = _load(f"folder:{folder}", 0)
  config = tiny_config(folder)
  config.bottleneck.layer = "conv2d"
  message = one_line_error(lambda: bottleneck.feature_splits(config, "/nonexistent", None, {}, splits))
  assert "in_memory_limit_gb" in message


def test_tfds_data_sources_stream_with_their_own_splits():
  with tfds.testing.mock_data(num_examples=20):
    cifar = data.load("cifar10", image_size=8, validation_split=0.25, in_memory_limit_gb=0)
    assert isinstance(cifar.train, data.StreamingSet) and len(cifar.train) + len(cifar.validation) == 20
    assert len(cifar.class_names) == 10
    batch = next(data.batches(cifar.train, batch_size=4, seed=0, epoch=0, shuffle=True))
    assert batch["images"].shape == (4, 8, 8, 3) and batch["images"].dtype == np.uint8
    imagenet = data.load("imagenet2012", image_size=8, in_memory_limit_gb=0)
    assert len(imagenet.train) == len(imagenet.validation) == 20 and len(imagenet.class_names) == 1000
    faces = data.load("celeb_a:Smiling", image_size=8, in_memory_limit_gb=0, limit_per_class=3)
    assert faces.class_names == ["not smiling", "smiling"] and faces.test is not None
    labels = streaming.head(faces.test, 6)[1]
    assert len(labels) <= 6 and set(labels) <= {0, 1}
    # A record's image and label do not depend on whether it is read alone or in a batch.
    image, label = cifar.train.source[int(cifar.train.index[0])]
    np.testing.assert_array_equal(data.head(cifar.train, 1).images[0], image)


def test_a_tfds_dataset_that_cannot_stream_says_how_to_fix_it(tmp_path):
  # imagenet2012 without its manually downloaded tars fails at once, on- or offline.
  message = one_line_error(lambda: data.load("imagenet2012", image_size=8, data_dir=str(tmp_path / "empty"),
                                             in_memory_limit_gb=0))
  assert f"put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in {tmp_path}" in message
  assert "array_record" in message
  # A dataset prepared as tfrecord (tfds's default) has no random access: the message names both ways out.
  with tfds.testing.mock_data(num_examples=4, as_data_source_fn=lambda *a, **k: (_ for _ in ()).throw(
      NotImplementedError("Random access data source for file format tfrecord is not supported"))):
    message = one_line_error(lambda: data.load("cifar10", image_size=8, in_memory_limit_gb=0))
  assert "tfds build cifar10 --file_format=array_record" in message and "in_memory_limit_gb" in message


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_params_without_warnings(broken_folder, tmp_path):
  options = dict(image_size=16, num_epochs=2, batch_size=4, eval_batch_size=4, checkpoint_every_steps=1,
                 in_memory_limit_gb=0.0)
  config = tiny_config(broken_folder, **options)
  train = data.load(config.dataset, image_size=16, seed=config.seed, in_memory_limit_gb=0).train
  steps_per_epoch = len(train) // 4
  # Kill in epoch 2 once its reader has skipped the broken file: its position is then past batch * 4.
  broken = int(np.flatnonzero(train.index == train.source.files.index("red/00_broken.png"))[0])
  slot = list(data.pipeline.epoch_permutation(len(train), config.seed, 1)).index(broken)
  assert slot < 4 * (steps_per_epoch - 1), "the broken file falls late in epoch 2: change the seed"
  kill_after = steps_per_epoch + slot // 4 + 1
  loop.train_and_evaluate(config, str(tmp_path / "reference"))

  workdir = tmp_path / "killed"
  command = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
             f"--config.dataset=folder:{broken_folder}", "--config.num_classes=3"] + [
             f"--config.{key}={value}" for key, value in options.items()]
  latest = workdir / "checkpoints" / "latest"
  saved = lambda: sorted(int(d.name) for d in latest.iterdir() if d.name.isdigit()) if latest.is_dir() else []
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  started = time.time()
  while process.poll() is None and time.time() - started < 300 and not [s for s in saved() if s >= kill_after]:
    time.sleep(0.01)
  assert process.poll() is None, "the run ended before it could be killed"
  process.kill()
  process.wait()
  step = max(s for s in saved() if s < 2 * steps_per_epoch)
  record = json.loads((latest / str(step) / "record" / "metadata").read_text())
  assert record["input"]["positions"][0] > 4 * record["input"]["batch"]  # resumed past a skipped file

  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"(step {step})" in done.stdout and "os.fork()" not in done.stderr
  assert not PYTHON_WARNING.search(done.stderr), done.stderr[-2000:]
  _, expected, _ = weights.restore(str(tmp_path / "reference"))
  _, actual, _ = weights.restore(str(workdir))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(b), np.asarray(a)), expected, actual)


def test_two_processes_each_stream_their_share_and_save_both_positions(folder, tmp_path):
  """With every file readable, two processes reading their shares train as one process reading all (a skip would
  make each process take its replacement from its own share, so the global batch would differ)."""
  from test_multihost import assert_same_weights, train_one_and_two_processes
  common = [sys.executable, "train.py", "--config", "configs/simple_cnn.py", f"--config.dataset=folder:{folder}",
            "--config.num_classes=3", "--config.image_size=16", "--config.batch_size=8", "--config.eval_batch_size=8",
            "--config.num_epochs=1", "--config.steps_per_epoch=3", "--config.checkpoint_every_steps=1",
            "--config.keep_checkpoints=5", "--config.in_memory_limit_gb=0"]
  train_one_and_two_processes(common, tmp_path)
  record = json.loads((tmp_path / "two" / "checkpoints" / "latest" / "2" / "record" / "metadata").read_text())
  assert record["input"]["batch"] == 2 and len(record["input"]["positions"]) == 2
  assert_same_weights(tmp_path / "one", tmp_path / "two")
