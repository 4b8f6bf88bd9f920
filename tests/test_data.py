"""cnnjax.data: sources (folder, zip, tfds), splits, batches, on-device augmentation and preprocessing."""
import importlib
import io
import os
import threading
import time
import zipfile

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnnjax import data
from cnnjax.data import sources

# The package exports the function `augment`, which shadows its module of the same name.
augment_lib = importlib.import_module("cnnjax.data.augment")

# Each class has its own colour, so a decoded image tells its label.
CAT_RGB, DOG_RGB = (200, 30, 30), (30, 30, 200)


def _jpeg(rgb, size=(14, 10)) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, rgb).save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def _tiny_dataset():
  """{relative path: bytes}: 3 cats, 5 decodable dogs (grey, RGBA, 16-bit among them), 2 broken files, noise."""
  files = {f"train/cats/cat.{i}.jpg": _jpeg(CAT_RGB) for i in range(3)}
  files.update({f"train/dogs/dog.{i}.jpg": _jpeg(DOG_RGB, size=(8, 20)) for i in range(2)})
  files["train/dogs/grey.png"] = _png(Image.new("L", (9, 9), 77))
  files["train/dogs/rgba.png"] = _png(Image.new("RGBA", (9, 9), (0, 0, 255, 128)))
  files["train/dogs/deep.png"] = _png(Image.fromarray(np.full((9, 9), 65535, np.uint16)))
  files["train/dogs/empty.jpg"] = b""
  files["train/dogs/truncated.jpg"] = _jpeg(DOG_RGB)[:40]
  files["train/dogs/notes.txt"] = b"not an image"
  files["cover.jpg"] = _jpeg(CAT_RGB)  # outside every class folder: ignored, as Keras does
  files["__MACOSX/train/cats/._cat.0.jpg"] = b"resource fork"  # what macOS's zip adds
  return files


@pytest.fixture
def image_dir(tmp_path):
  for name, content in _tiny_dataset().items():
    path = tmp_path / "pets" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
  return tmp_path / "pets"


@pytest.fixture
def image_zip(tmp_path):
  path = tmp_path / "pets.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("train/", b"")  # a directory entry, which the shared zips lack
    for name, content in _tiny_dataset().items():
      archive.writestr(name, content)
  return path


def _load(path, **options):
  return data.load(f"folder:{path}", **{"image_size": 6, "validation_split": 0.0, "cache_dir": "", **options})


@pytest.mark.parametrize("source", ["image_dir", "image_zip"])
def test_folder_and_zip_decode_labels_and_skip_broken_files(source, request):
  splits = _load(request.getfixturevalue(source))
  assert splits.class_names == ["cats", "dogs"]
  assert splits.skipped == 2  # empty.jpg and truncated.jpg; notes.txt is not an image file
  assert splits.validation is None
  images, labels = splits.train.images, splits.train.labels
  assert images.shape == (8, 6, 6, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 1, 1])
  # Files sorted by name within a class: deep (16-bit white), dog.0, dog.1, grey, rgba.
  np.testing.assert_allclose(images[:3].reshape(-1, 3).mean(0), CAT_RGB, atol=4)
  np.testing.assert_array_equal(images[3], 255)  # 16 bits rescaled, not clipped
  np.testing.assert_allclose(images[4:6].reshape(-1, 3).mean(0), DOG_RGB, atol=4)
  np.testing.assert_array_equal(images[6], 77)  # grey copied to R, G and B
  np.testing.assert_array_equal(images[7], np.broadcast_to([0, 0, 255], (6, 6, 3)))  # alpha dropped


def test_zip_and_directory_give_the_same_arrays(image_dir, image_zip):
  from_dir, from_zip = _load(image_dir), _load(image_zip)
  np.testing.assert_array_equal(from_dir.train.images, from_zip.train.images)
  np.testing.assert_array_equal(from_dir.train.labels, from_zip.train.labels)


@pytest.mark.parametrize("source", ["image_dir", "image_zip"])
def test_threaded_decoding_matches_serial_and_never_forks(source, request, monkeypatch):
  """Big sources decode in threads: bit-identical to one thread, broken files still skipped and counted, and no
  process is forked (forking after JAX has started its threads can deadlock)."""
  path = request.getfixturevalue(source)
  serial = _load(path)
  threads = []
  real_decode_range = sources._decode_range
  monkeypatch.setattr(sources, "_decode_range",
                      lambda *args: threads.append(threading.current_thread().name) or real_decode_range(*args))
  monkeypatch.setattr(sources, "_MIN_FILES_FOR_THREADS", 0)
  monkeypatch.setattr(os, "cpu_count", lambda: 4)
  monkeypatch.setattr(os, "fork", lambda: pytest.fail("decoding forked a process"))
  threaded = _load(path)
  assert len(threads) > 1 and all(name.startswith("cnnjax-decode") for name in threads), threads
  np.testing.assert_array_equal(threaded.train.images, serial.train.images)
  np.testing.assert_array_equal(threaded.train.labels, serial.train.labels)
  assert threaded.skipped == serial.skipped == 2


def test_single_channel_and_limit_per_class(image_zip):
  splits = _load(image_zip, channels=1, limit_per_class=2)
  assert splits.train.images.shape == (4, 6, 6, 1)
  np.testing.assert_array_equal(splits.train.labels, [0, 0, 1, 1])
  # ITU-R 601 luma of the cat colour: 0.299 R + 0.587 G + 0.114 B.
  assert abs(int(splits.train.images[0].mean()) - round(0.299 * 200 + 0.587 * 30 + 0.114 * 30)) <= 4


def test_cache_is_reused_and_invalidated_when_the_zip_changes(image_zip, tmp_path):
  cache = tmp_path / "cache"
  first = _load(image_zip, cache_dir=str(cache))
  assert len(list(cache.iterdir())) == 1
  second = _load(image_zip, cache_dir=str(cache))
  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert second.skipped == first.skipped and second.class_names == first.class_names
  with zipfile.ZipFile(image_zip, "a") as archive:
    archive.writestr("train/cats/extra.jpg", _jpeg(CAT_RGB))
  os.utime(image_zip, ns=(time.time_ns(), time.time_ns() + 10 ** 9))
  third = _load(image_zip, cache_dir=str(cache))
  assert len(third.train) == len(first.train) + 1
  assert sorted(p.suffix for p in cache.iterdir()) == [".npz", ".npz"]  # no leftover temporary files


def test_path_traversal_entries_are_rejected(tmp_path):
  path = tmp_path / "evil.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("train/cats/a.jpg", _jpeg(CAT_RGB))
    archive.writestr("train/../../dogs/b.jpg", _jpeg(DOG_RGB))
  with pytest.raises(ValueError, match="unsafe entry"):
    _load(path)


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cats_vs_dogs", 2)])
def test_tfds_datasets_with_mock_data(name, classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    splits = data.load(name, image_size=8, validation_split=0.25, seed=1)
  assert len(splits.class_names) == classes
  assert splits.train.images.shape[1:] == (8, 8, 3) and splits.train.images.dtype == np.uint8
  assert len(splits.train) + len(splits.validation) == 12
  assert set(splits.train.labels) | set(splits.validation.labels) <= set(range(classes))


def test_tfds_failures_become_one_line_errors(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  def offline(*args, **kwargs):
    raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'\nretrying")

  monkeypatch.setattr(tfds, "load", offline)
  with pytest.raises(ValueError, match=r"tfds could not load 'cifar10' .*ConnectionError.*folder:PATH") as error:
    data.load("cifar10", image_size=8, data_dir=str(tmp_path))
  assert "\n" not in str(error.value)


def test_stratified_split_is_deterministic_disjoint_and_per_class():
  labels = np.repeat(np.arange(3, dtype=np.int32), [10, 20, 40])
  train, validation = data.pipeline.stratified_split(labels, 0.1, seed=3)
  again = data.pipeline.stratified_split(labels, 0.1, seed=3)
  np.testing.assert_array_equal(train, again[0])
  np.testing.assert_array_equal(validation, again[1])
  assert not set(train) & set(validation)
  assert sorted(np.concatenate([train, validation])) == list(range(len(labels)))
  np.testing.assert_array_equal(np.bincount(labels[validation]), [1, 2, 4])
  other = data.pipeline.stratified_split(labels, 0.1, seed=4)[1]
  assert not np.array_equal(validation, other)


def test_load_splits_decoded_images_consistently(image_zip):
  splits = _load(image_zip, validation_split=0.34, seed=0)
  assert len(splits.train) == 5 and len(splits.validation) == 3  # round(0.34 * 3) = 1 cat, round(0.34 * 5) = 2 dogs
  np.testing.assert_array_equal(np.bincount(splits.validation.labels), [1, 2])
  again = _load(image_zip, validation_split=0.34, seed=0)
  np.testing.assert_array_equal(splits.validation.images, again.validation.images)


def _image_set(n, size=2):
  # Image i is filled with the value i, so a batch tells which images it holds.
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 1)).copy()
  return data.ImageSet(images, np.arange(n, dtype=np.int32) % 3)


def _ids(batch):
  return batch["images"][:, 0, 0, 0].tolist()


def test_training_batches_are_a_seeded_permutation():
  images = _image_set(10)
  epoch0 = [_ids(b) for b in data.batches(images, batch_size=4, seed=1, epoch=0, shuffle=True)]
  assert len(epoch0) == 2 == data.num_batches(10, 4, drop_remainder=True)  # the last 2 images dropped
  assert all(len(ids) == 4 for ids in epoch0) and len(set(sum(epoch0, []))) == 8
  assert epoch0 == [_ids(b) for b in data.batches(images, batch_size=4, seed=1, epoch=0, shuffle=True)]
  epoch1 = [_ids(b) for b in data.batches(images, batch_size=4, seed=1, epoch=1, shuffle=True)]
  assert epoch1 != epoch0
  batch = next(data.batches(images, batch_size=4, seed=1, epoch=0, shuffle=True))
  assert batch["labels"].dtype == np.int32 and batch["images"].dtype == np.uint8
  np.testing.assert_array_equal(batch["labels"], np.array(_ids(batch)) % 3)  # labels travel with images


def test_start_batch_resumes_exactly():
  images = _image_set(23)
  full = [_ids(b) for b in data.batches(images, batch_size=4, seed=5, epoch=2, shuffle=True)]
  resumed = [_ids(b) for b in data.batches(images, batch_size=4, seed=5, epoch=2, shuffle=True, start_batch=3)]
  assert resumed == full[3:]
  assert list(data.batches(images, batch_size=4, seed=5, epoch=2, shuffle=True, start_batch=5)) == []


@pytest.mark.parametrize("shuffle", [True, False])
def test_process_shards_union_to_the_global_batch(shuffle):
  images = _image_set(19)
  options = dict(batch_size=6, seed=0, epoch=3, shuffle=shuffle)
  global_batches = list(data.batches(images, **options))
  shards = [list(data.batches(images, process_index=p, process_count=3, **options)) for p in range(3)]
  for step, batch in enumerate(global_batches):
    parts = [shards[p][step] for p in range(3)]
    assert all(len(part["labels"]) == 2 for part in parts)
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), batch[key])


def test_evaluation_batches_cover_every_image_once_with_a_mask():
  images = _image_set(10)
  batches = list(data.batches(images, batch_size=4, seed=0, epoch=0, shuffle=False))
  assert len(batches) == 3 == data.num_batches(10, 4, drop_remainder=False)
  assert all(b["images"].shape == (4, 2, 2, 1) and b["mask"].dtype == np.float32 for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  ids = np.concatenate([_ids(b) for b in batches])
  np.testing.assert_array_equal(ids[mask == 1], np.arange(10))


@pytest.mark.parametrize("call, message", [
    (lambda: data.load("mnist", image_size=8), "unknown dataset 'mnist'; use 'cifar10'"),
    (lambda: data.load("folder:/no/such/dir", image_size=8), "does not exist"),
    (lambda: data.load("cifar10", image_size=8, validation_split=1.0), r"validation_split must be in \[0, 1\)"),
    (lambda: data.load("cifar10", image_size=8, channels=4), "channels must be 1"),
    (lambda: data.batches(_image_set(8), batch_size=6, seed=0, epoch=0, shuffle=True, process_count=4),
     "not divisible by process_count"),
    (lambda: data.batches(_image_set(3), batch_size=4, seed=0, epoch=0, shuffle=True), "exceeds the 3"),
    (lambda: data.preprocess(np.zeros((1, 2, 2, 3)), "imagenet"), "unknown preprocess mode 'imagenet'; use one"),
    (lambda: data.preprocess(np.zeros((1, 2, 2, 3)), "mean_std"), "needs both mean and std"),
    (lambda: data.augment(jnp.zeros((1, 2, 2, 1)), jax.random.PRNGKey(0), zoom=1.5), r"zoom must be in \[0, 1\)"),
    (lambda: data.augment(jnp.zeros((1, 2, 2, 1), jnp.uint8), jax.random.PRNGKey(0)), "float images"),
])
def test_bad_inputs_raise_one_line_errors(call, message):
  with pytest.raises(ValueError, match=message) as error:
    call()  # batches() too raises at the call, not at its first batch
  assert "\n" not in str(error.value)


def test_folders_without_images_or_with_one_class_are_rejected(tmp_path):
  (tmp_path / "empty" / "cats").mkdir(parents=True)
  (tmp_path / "empty" / "cats" / "readme.txt").write_text("no images")
  with pytest.raises(ValueError, match="no images in class subfolders"):
    _load(tmp_path / "empty")
  (tmp_path / "one" / "train" / "cats").mkdir(parents=True)
  (tmp_path / "one" / "train" / "cats" / "a.jpg").write_bytes(_jpeg(CAT_RGB))
  with pytest.raises(ValueError, match="at least 2"):
    _load(tmp_path / "one")


# ---- augmentation ------------------------------------------------------------------------------------------

# One batch shape for the warp tests, so they share compilations.
WARP_SHAPE = (2, 8, 8, 1)


def _random_images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 255, shape), jnp.float32)


def test_zero_settings_are_the_identity():
  images = _random_images((3, 5, 6, 2))
  settings = dict(horizontal_flip=False, rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0)
  np.testing.assert_array_equal(data.augment(images, jax.random.PRNGKey(0), **settings), images)


def test_a_flip_is_a_mirror_image():
  images = _random_images((16, 4, 5, 2))
  key = jax.random.PRNGKey(7)
  out = np.asarray(data.augment(images, key, horizontal_flip=True))
  mirrored = np.asarray(images)[:, :, ::-1]
  flipped = [np.array_equal(o, m) for o, m in zip(out, mirrored)]
  kept = [np.array_equal(o, i) for o, i in zip(out, np.asarray(images))]
  assert all(f != k for f, k in zip(flipped, kept))  # each image is exactly one of the two
  assert 0 < sum(flipped) < len(images)  # a fair coin over 16 images


def test_fixed_key_repeats_and_different_keys_differ():
  images = _random_images(WARP_SHAPE)
  settings = dict(rotation=20.0, width_shift=0.2, height_shift=0.1, shear=10.0, zoom=0.2, horizontal_flip=True)
  first = data.augment(images, jax.random.PRNGKey(1), **settings)
  assert first.shape == images.shape and first.dtype == images.dtype
  np.testing.assert_array_equal(first, data.augment(images, jax.random.PRNGKey(1), **settings))
  inside_jit = jax.jit(lambda x, k: data.augment(x, k, **settings))(images, jax.random.PRNGKey(1))
  np.testing.assert_allclose(inside_jit, first, rtol=1e-6, atol=1e-4)
  assert not np.allclose(first, data.augment(images, jax.random.PRNGKey(2), **settings))
  # Per-image keys: two copies of one image are transformed differently.
  twins = data.augment(jnp.stack([images[0], images[0]]), jax.random.PRNGKey(1), **settings)
  assert not np.allclose(twins[0], twins[1])


def test_warp_moves_pixels_as_its_matrix_says():
  image = np.zeros((1, 7, 7, 1), np.float32)
  image[0, 2, 1] = 1.0
  shift_right_by_3 = np.array([[[1., 0., 0.], [0., 1., -3.], [0., 0., 1.]]], np.float32)  # input = output - 3
  moved = np.asarray(jax.jit(augment_lib.warp)(jnp.asarray(image), jnp.asarray(shift_right_by_3)))
  assert moved[0, 2, 4, 0] == pytest.approx(1.0) and moved.sum() == pytest.approx(1.0)


def test_a_random_shift_moves_a_bright_pixel_by_the_drawn_amount():
  images = np.zeros(WARP_SHAPE, np.float32)
  images[:, 4, 4] = 1.0
  draws = {seed: augment_lib.random_parameters(augment_lib.augment_keys(jax.random.PRNGKey(seed))[0], 2,
                                               width_shift=0.2)["shift_x"][0] * 8 for seed in range(10)}
  assert all(abs(drawn) <= 0.2 * 8 for drawn in draws.values())
  seed = next(seed for seed, shift in draws.items() if abs(shift) > 0.5)  # a clearly visible shift
  shift = float(draws[seed])
  out = np.asarray(data.augment(jnp.asarray(images), jax.random.PRNGKey(seed), width_shift=0.2))[0, :, :, 0]
  # Bilinear resampling keeps mass and centroid: the content moves by -shift columns, not at all in rows.
  rows, cols = np.indices(out.shape)
  assert out.sum() == pytest.approx(1.0, abs=1e-5)
  assert (out * rows).sum() == pytest.approx(4.0, abs=1e-5)
  assert (out * cols).sum() == pytest.approx(4.0 - shift, abs=1e-4)


@pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")  # inside Keras
def test_affine_warp_matches_keras_apply_affine_transform():
  legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
  images = _random_images(WARP_SHAPE, seed=4)
  key = jax.random.PRNGKey(11)
  settings = dict(rotation=30.0, width_shift=0.2, height_shift=0.1, shear=20.0, zoom=0.3)
  out = np.asarray(data.augment(images, key, **settings))
  parameters = augment_lib.random_parameters(augment_lib.augment_keys(key)[0], len(images), **settings)
  for b in range(len(images)):
    p = {name: float(value[b]) for name, value in parameters.items()}
    # Keras's channels-last path applies `tx` to columns and `zx` to columns (see the augment docstring).
    expected = legacy.apply_affine_transform(
        np.asarray(images[b], np.float64), theta=p["theta"], tx=p["shift_x"] * 8, ty=p["shift_y"] * 8,
        shear=p["shear"], zx=p["zoom_x"], zy=p["zoom_y"], row_axis=0, col_axis=1, channel_axis=2,
        fill_mode="nearest", order=1)
    np.testing.assert_allclose(out[b], expected, atol=1e-2)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(seed=st.integers(0, 2 ** 16), rotation=st.floats(0, 180), shift=st.floats(0, 0.9),
                  shear=st.floats(0, 60), zoom=st.floats(0, 0.9), flip=st.booleans())
def test_augmentation_stays_within_each_images_range(seed, rotation, shift, shear, zoom, flip):
  images = _random_images(WARP_SHAPE, seed=seed)
  out = np.asarray(data.augment(images, jax.random.PRNGKey(seed), horizontal_flip=flip, rotation=rotation,
                                width_shift=shift, height_shift=shift, shear=shear, zoom=zoom))
  low = np.asarray(images).min(axis=(1, 2, 3), keepdims=True)
  high = np.asarray(images).max(axis=(1, 2, 3), keepdims=True)
  assert np.all(out >= low - 1e-3) and np.all(out <= high + 1e-3)


# ---- preprocessing -----------------------------------------------------------------------------------------

def test_preprocess_modes_match_their_formulas():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3)).astype(np.uint8)
  x = pixels.astype(np.float64)
  expected = {
      "rescale": x / 255,
      "tf": x / 127.5 - 1,
      "caffe": x[..., ::-1] - [103.939, 116.779, 123.68],
      "torch": (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
  }
  for mode, want in expected.items():
    got = data.preprocess(pixels, mode)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=mode)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  np.testing.assert_allclose(data.preprocess(pixels, "mean_std", mean=mean, std=std), (x / 255 - mean) / std,
                             rtol=1e-5, atol=1e-5)


def test_preprocess_matches_keras_applications():
  imagenet_utils = pytest.importorskip("keras.src.applications.imagenet_utils")
  pixels = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
  for mode in ("caffe", "tf", "torch"):
    want = imagenet_utils.preprocess_input(pixels.copy(), data_format="channels_last", mode=mode)
    np.testing.assert_allclose(data.preprocess(pixels, mode), want, rtol=1e-5, atol=1e-4, err_msg=mode)


def test_channel_mean_std():
  pixels = np.random.default_rng(2).integers(0, 256, (5, 4, 4, 3)).astype(np.uint8)
  mean, std = data.channel_mean_std(pixels, chunk=2)
  np.testing.assert_allclose(mean, (pixels / 255).mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(std, (pixels / 255).std(axis=(0, 1, 2)), rtol=1e-4)


# ---- real data -----------------------------------------------------------------------------------------------

def test_real_cifar10_zip_loads_quickly(shared_dir):
  start = time.perf_counter()
  splits = data.load(f"folder:{shared_dir / 'data/cifar10_jpeg/train.zip'}", image_size=32,
                     limit_per_class=30, validation_split=0.1, cache_dir="")
  assert time.perf_counter() - start < 20
  assert splits.class_names[:3] == ["airplane", "automobile", "bird"] and len(splits.class_names) == 10
  assert len(splits.train) == 270 and len(splits.validation) == 30 and splits.skipped == 0
  np.testing.assert_array_equal(np.bincount(splits.validation.labels), [3] * 10)
  mean = splits.train.images.mean(axis=(0, 1, 2)) / 255
  np.testing.assert_allclose(mean, [0.49, 0.48, 0.45], atol=0.06)  # CIFAR-10's published channel means


def test_real_cats_vs_dogs_zip_resizes_photos(shared_dir):
  splits = data.load(f"folder:{shared_dir / 'data/cats_vs_dogs/train.zip'}", image_size=40,
                     limit_per_class=5, validation_split=0.0, cache_dir="")
  assert splits.class_names == ["cats", "dogs"]
  assert splits.train.images.shape == (10, 40, 40, 3)
