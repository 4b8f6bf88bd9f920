"""Messy image folders and zips: loaded safely, bad files skipped and counted, nothing written but the cache.

tests/test_data.py covers zero-byte and header-truncated JPEGs, a text file, grey/RGBA/16-bit PNGs, a folder with
one class or without images, and a '../..' zip entry; these are the rest.
"""
import io
import logging
import os
import signal
import zipfile
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnjax import data
from cnnjax.data import sources

RED, BLUE = (200, 30, 30), (30, 30, 200)


def encode(image: Image.Image, kind: str, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, kind, **options)
  return buffer.getvalue()


def good_files():
  files = {f"train/cats/{i}.jpg": encode(Image.new("RGB", (10, 8), RED), "JPEG") for i in range(3)}
  files.update({f"train/dogs/{i}.jpg": encode(Image.new("RGB", (8, 10), BLUE), "JPEG") for i in range(3)})
  return files


def noisy_jpeg() -> bytes:
  return encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "JPEG")


def write_folder(root: Path, files) -> Path:
  for name, content in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
  return root


def write_zip(path: Path, files) -> Path:
  with zipfile.ZipFile(path, "w") as archive:
    for name, content in files.items():
      archive.writestr(name, content)
  return path


def load(path, **options):
  return data.load(f"folder:{path}", **{"image_size": 6, "validation_split": 0.0, "cache_dir": "", **options})


def one_line_error(call, fragment):
  with pytest.raises(ValueError) as error:
    call()
  assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


# --- no usable data ------------------------------------------------------------------------------------------

def test_empty_or_classless_sources_are_one_line_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  one_line_error(lambda: load(tmp_path / "empty"), "has no images in class subfolders")
  (tmp_path / "only_folders" / "cats").mkdir(parents=True)
  (tmp_path / "only_folders" / "dogs").mkdir()
  one_line_error(lambda: load(tmp_path / "only_folders"), "has no images in class subfolders")
  one_line_error(lambda: load(write_zip(tmp_path / "empty.zip", {})), "has no images in class subfolders")
  flat = write_folder(tmp_path / "flat", {"a.jpg": noisy_jpeg(), "b.jpg": noisy_jpeg()})
  one_line_error(lambda: load(flat), "all 2 images are in one folder (.); a classifier needs at least 2 classes")
  (tmp_path / "not_a_zip.zip").write_bytes(b"PK\x03\x04 torn")
  one_line_error(lambda: load(tmp_path / "not_a_zip.zip"), "is a file but not a zip")
  broken = write_folder(tmp_path / "broken", {"cats/a.jpg": b"", "dogs/b.png": b"\x89PNG\r\n\x1a\n"})
  one_line_error(lambda: load(broken), "none of its 2 image files decoded")


# --- bad files among good ones: skipped, counted and named ---------------------------------------------------

def bad_files():
  jpeg = noisy_jpeg()
  png = encode(Image.new("RGB", (30, 30), RED), "PNG")
  return {
      "train/cats/cut_in_the_scan.jpg": jpeg[:int(len(jpeg) * 0.8)],  # header fine, pixels missing
      "train/cats/cut.png": png[:len(png) - 20],  # no IEND / torn IDAT
      "train/dogs/report.png": b"%PDF-1.4 a document with an image extension",
      "train/dogs/page.jpg": b"<html><body>404</body></html>",
      "train/dogs/random.bmp": os.urandom(300),
  }


def test_corrupt_files_in_a_folder_are_skipped_counted_and_named(tmp_path, caplog):
  root = write_folder(tmp_path / "pets", {**good_files(), **bad_files()})
  (root / "train/cats/gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # a dangling symlink
  os.mkfifo(root / "train/dogs/pipe.jpg")  # reading it would block forever
  (root / "train/dogs/link_to_parent").symlink_to(root / "train")  # a loop: images must not repeat
  signal.alarm(60)  # a hang fails the test instead of the session
  try:
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
      splits = load(root)
  finally:
    signal.alarm(0)
  assert splits.class_names == ["cats", "dogs"]
  assert len(splits.train) == 6 and splits.skipped == 6  # 5 bad files + the dangling link; the FIFO is no file
  np.testing.assert_array_equal(splits.train.labels, [0, 0, 0, 1, 1, 1])
  warning = caplog.text
  assert "skipped 6 of 12 files" in warning and "train/cats/cut.png" in warning


def test_corrupt_zip_entries_are_skipped_and_counted(tmp_path, monkeypatch):
  files = {**good_files(), **bad_files(), "train/dogs/bad_crc.jpg": noisy_jpeg(),
           "train/cats/inflates_to_2mb.png": b"\0" * 2**21}
  path = tmp_path / "pets.zip"
  with zipfile.ZipFile(path, "w") as archive:
    for name, content in files.items():
      archive.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED)
  raw = bytearray(path.read_bytes())  # flip one byte of an entry's compressed data: a bad CRC on reading
  offset = raw.index(b"train/dogs/bad_crc.jpg") + len("train/dogs/bad_crc.jpg") + 200
  raw[offset] ^= 0xFF
  path.write_bytes(bytes(raw))
  # A zip bomb: entries whose declared size is over the limit are never inflated (a 1 MB limit, for speed).
  monkeypatch.setattr(sources, "MAX_FILE_BYTES", 2**20)
  inflated = []
  real_read = zipfile.ZipFile.read
  monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: inflated.append(name) or real_read(self, name, *a))
  splits = load(path)
  assert len(splits.train) == 6 and splits.skipped == 7
  assert "train/cats/inflates_to_2mb.png" not in inflated


def test_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, monkeypatch):
  # PNGs of 12000 x 12000 (Pillow only warns below twice Image.MAX_IMAGE_PIXELS, and would decode 144
  # megapixels into ~430 MB of RGB) and 20000 x 20000 (Pillow refuses), each a few KB on disk.
  def bilevel_png(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
      return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\0" * ((side // 8 + 1) * side), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
  assert Image.MAX_IMAGE_PIXELS < 12000 ** 2 < 2 * Image.MAX_IMAGE_PIXELS < 20000 ** 2
  root = write_folder(tmp_path / "pets", {**good_files(), "train/cats/bomb.png": bilevel_png(12000),
                                          "train/dogs/bigger_bomb.png": bilevel_png(20000)})
  decoded_sizes = []
  real_to_array = sources.to_array
  monkeypatch.setattr(sources, "to_array", lambda image, *args: decoded_sizes.append(image.size)
                      or real_to_array(image, *args))
  splits = load(root)
  assert len(splits.train) == 6 and splits.skipped == 2
  assert max(w * h for w, h in decoded_sizes) < 1000


# --- every pixel format Pillow reads becomes uint8 RGB (or grey) -----------------------------------------------

def exotic_images():
  palette = Image.new("P", (9, 9), 0)
  palette.putpalette([255, 0, 0] * 256)
  palette.info["transparency"] = 0
  return {
      "cmyk.jpg": (encode(Image.new("CMYK", (9, 9), (0, 255, 255, 0)), "JPEG"), (255, 0, 0)),
      "grey_alpha.png": (encode(Image.new("LA", (9, 9), (77, 100)), "PNG"), (77, 77, 77)),
      "bilevel.png": (encode(Image.new("1", (9, 9), 1), "PNG"), (255, 255, 255)),
      "transparent_palette.png": (encode(palette, "PNG", transparency=0), (255, 0, 0)),
      "palette.gif": (encode(Image.new("RGB", (9, 9), (0, 0, 255)), "GIF"), (0, 0, 255)),
      "lossless.webp": (encode(Image.new("RGBA", (9, 9), (0, 255, 0, 9)), "WEBP", lossless=True), (0, 255, 0)),
      "deep.tiff": (encode(Image.fromarray(np.full((9, 9), 65535, np.uint16)), "TIFF"), (255, 255, 255)),
      "int32.tiff": (encode(Image.fromarray(np.full((9, 9), 0, np.int32)), "TIFF"), (0, 0, 0)),
      "bitmap.bmp": (encode(Image.new("RGB", (9, 9), (10, 20, 30)), "BMP"), (10, 20, 30)),
      "portable.ppm": (encode(Image.new("RGB", (9, 9), (40, 50, 60)), "PPM"), (40, 50, 60)),
  }


@pytest.mark.parametrize("channels", [3, 1])
def test_every_pixel_format_decodes_to_the_same_uint8_layout(tmp_path, channels):
  images = exotic_images()
  files = {f"train/cats/{name}": content for name, (content, _) in images.items()}
  files.update({f"train/dogs/{i}.jpg": encode(Image.new("RGB", (12, 7), BLUE), "JPEG") for i in range(2)})
  splits = load(write_folder(tmp_path / "mixed", files), channels=channels)
  assert splits.skipped == 0
  assert splits.train.images.shape == (len(images) + 2, 6, 6, channels) and splits.train.images.dtype == np.uint8
  expected = np.array([rgb for _, (_, rgb) in sorted(images.items())], np.float64)
  if channels == 1:  # ITU-R 601 luma, as Pillow's convert('L')
    expected = expected @ np.array([0.299, 0.587, 0.114])[:, None]
  cats = splits.train.images[splits.train.labels == 0].reshape(len(images), -1, channels).mean(axis=1)
  np.testing.assert_allclose(cats, expected, atol=3)


# --- zips that try to escape, and what a load writes ---------------------------------------------------------

def tree(root: Path):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("entry", ["/etc/cats/x.jpg", "../x.jpg", "train/cats/..\\..\\..\\x.jpg", "C:/x/cats/y.jpg",
                                   "train/./../../x.jpg"])
def test_zip_entries_that_escape_are_refused_and_nothing_is_written(tmp_path, monkeypatch, entry):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("CNNJAX_CACHE_DIR", raising=False)
  monkeypatch.chdir(tmp_path)
  path = write_zip(tmp_path / "evil.zip", {**good_files(), entry: noisy_jpeg()})
  before = tree(tmp_path)
  with pytest.raises(ValueError) as error:
    data.load(f"folder:{path}", image_size=6)
  assert "unsafe entry" in str(error.value) and "\n" not in str(error.value)
  assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_a_load_writes_nothing_but_its_cache_file(tmp_path, monkeypatch, kind):
  files = {**good_files(), **bad_files()}
  source = write_folder(tmp_path / "pets", files) if kind == "folder" else write_zip(tmp_path / "pets.zip", files)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("CNNJAX_CACHE_DIR", raising=False)
  monkeypatch.chdir(tmp_path)
  before = tree(tmp_path)
  first = data.load(f"folder:{source}", image_size=6, validation_split=0.0)
  created = sorted(set(tree(tmp_path)) - set(before))
  assert [p for p in created if p.endswith(".npz")] == [p for p in created if not Path(tmp_path, p).is_dir()]
  assert len([p for p in created if p.endswith(".npz")]) == 1 and created[-1].startswith("home/.cache/cnnjax/")
  assert set(before) <= set(tree(tmp_path))

  monkeypatch.setenv("CNNJAX_CACHE_DIR", str(tmp_path / "cache"))
  second = data.load(f"folder:{source}", image_size=6, validation_split=0.0)
  assert [p for p in set(tree(tmp_path)) - set(before) - set(created)] and \
      all(p.startswith("cache") for p in set(tree(tmp_path)) - set(before) - set(created))
  assert second.skipped == first.skipped == len(bad_files())
  np.testing.assert_array_equal(second.train.images, first.train.images)
