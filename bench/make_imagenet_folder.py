"""Makes an ImageNet-layout folder (OUT/<wnid>/*.JPEG) of synthetic photos for the streaming-input measurements
(issue 15): random crops of the shipped cats-vs-dogs photos and demo photos, with random colour, at 256 px on the
shorter side. Never committed; the default output is /work/imagenet_like.

  nice -n 19 .venv/bin/python bench/make_imagenet_folder.py --out /work/imagenet_like --classes 1000 --per_class 70

Each image is a pure function of (--seed, class, index), so a rerun skips the files already written (each is
written to a temporary name and renamed, so a killed run leaves no half-written JPEG) and makes the same folder.
The transforms are Inception-style crops (Szegedy et al. 2015, "Going deeper with convolutions": 25-100% of the
area, aspect 3/4-4/3) and colour jitter in the spirit of torchvision's ColorJitter (brightness, contrast,
saturation and a hue rotation), so that no two files decode to the same pixels.
"""
import argparse
import io
import multiprocessing
import os
import zipfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")
SHORT_SIDE = 256


def source_photos(shared: str):
  """(name, encoded bytes) of every shipped photo: the 2,000 cats-vs-dogs JPEGs, then the demo photos."""
  photos = []
  with zipfile.ZipFile(os.path.join(shared, "cats_vs_dogs", "train.zip")) as archive:
    for name in sorted(archive.namelist()):
      if name.lower().endswith(".jpg"):
        photos.append((name, archive.read(name)))
  demo = os.path.join(shared, "photos")
  for name in sorted(os.listdir(demo)):
    if name.lower().endswith((".jpg", ".png")):
      with open(os.path.join(demo, name), "rb") as f:
        photos.append((name, f.read()))
  return photos


def random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """A crop of 25-100% of the area with aspect (w/h) in [3/4, 4/3], placed uniformly; the whole image if none fits."""
  width, height = image.size
  for _ in range(10):
    area = rng.uniform(0.25, 1.0) * width * height
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w, crop_h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
      return image.crop((left, top, left + crop_w, top + crop_h))
  return image


def jitter_colour(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness and contrast x U(0.6, 1.4), saturation x U(0.5, 1.5), hue rotated by U(-30, 30) degrees."""
  x = pixels.astype(np.float32)
  x *= rng.uniform(0.6, 1.4)  # brightness
  mean = x.mean()
  x = (x - mean) * rng.uniform(0.6, 1.4) + mean  # contrast
  grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
  x = grey[..., None] + (x - grey[..., None]) * rng.uniform(0.5, 1.5)  # saturation
  # Hue: a rotation about the grey axis (1, 1, 1) of RGB space, Rodrigues' formula.
  angle = np.deg2rad(rng.uniform(-30, 30))
  axis = np.ones(3, np.float32) / np.sqrt(3)
  cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], np.float32)
  rotation = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)
  x = x @ rotation.T.astype(np.float32)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_image(encoded: bytes, rng: np.random.Generator) -> bytes:
  """One synthetic photo: crop, resize to 256 px on the shorter side, flip, jitter, JPEG quality 90."""
  with Image.open(io.BytesIO(encoded)) as image:
    image = random_crop(image.convert("RGB"), rng)
  scale = SHORT_SIDE / min(image.size)
  image = image.resize((max(SHORT_SIDE, round(image.width * scale)), max(SHORT_SIDE, round(image.height * scale))),
                       Image.BILINEAR)
  pixels = np.asarray(image)
  if rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  out = io.BytesIO()
  Image.fromarray(jitter_colour(pixels, rng)).save(out, format="JPEG", quality=90)
  return out.getvalue()


def wnid(label: int) -> str:
  """A made-up WordNet-style id per class (n + 8 digits), sorted as the labels."""
  return f"n{label:08d}"


def write_class(args):
  """Writes the missing images of one class; returns how many it wrote."""
  out, label, per_class, seed, photos = args
  folder = os.path.join(out, wnid(label))
  os.makedirs(folder, exist_ok=True)
  written = 0
  for index in range(per_class):
    path = os.path.join(folder, f"{wnid(label)}_{index}.JPEG")
    if os.path.exists(path):
      continue
    rng = np.random.default_rng([seed, label, index])
    _, encoded = photos[int(rng.integers(len(photos)))]
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as f:
      f.write(make_image(encoded, rng))
    os.replace(temporary, path)
    written += 1
  return written


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/work/imagenet_like")
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--per_class", type=int, default=70)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--shared", default=SHARED, help="the shared/data folder")
  args = parser.parse_args()
  if args.classes < 2 or args.per_class < 1:
    parser.error("--classes must be >= 2 and --per_class >= 1")
  photos = source_photos(args.shared)
  # Each class draws from its own few photos, so a class is something a model could learn to tell apart.
  tasks = []
  for label in range(args.classes):
    own = [photos[(label * 2 + k) % len(photos)] for k in range(2)]
    tasks.append((args.out, label, args.per_class, args.seed, own))
  total = 0
  with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
    for count in pool.imap_unordered(write_class, tasks):
      total += count
  print(f"wrote {total} new images; {args.out} holds {args.classes} classes x {args.per_class} images")


if __name__ == "__main__":
  main()
