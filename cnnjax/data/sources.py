"""Where images come from: tfds datasets and Keras-layout image folders or zips, decoded once to uint8 arrays.

Every source returns a `Decoded`: all images of the source's training split at `image_size` x `image_size`,
uint8, with int32 labels and the class names in label order. Datasets here are small (CIFAR-10 is 150 MB of
uint8 at 32 px), so holding them in memory makes iteration a permutation and resume exact. celeb_a returns a
`Decoded` per split, since it comes with its own validation and test splits.

Folder/zip layout is Keras `flow_from_directory`: one subfolder per class, class names sorted alphabetically
give the label order. The class level is the first path component below the deepest folder shared by every
image in a folder, so both `cats/x.jpg` and a zip of `train/cats/x.jpg` work; images nested deeper inside a
class folder belong to that class (Keras also lists class folders recursively) and images beside the class
folders belong to none and are ignored (as in Keras). Hidden files and `__MACOSX/` entries are ignored.
"""
import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import posixpath
import tempfile
import stat
import time
import warnings
import zipfile
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# Keras flow_from_directory's white list, plus the formats Pillow decodes as often.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".gif", ".webp")
TFDS_DATASETS = ("cifar10", "cats_vs_dogs", "imagenet2012")
# tfds datasets whose own 'validation' split is the validation set (validation_split does not apply).
TFDS_WITH_VALIDATION = ("imagenet2012",)
# tfds datasets stored as JPEG bytes that cnnjax decodes itself, only for the images it keeps (limit_per_class
# then skips the others undecoded) and straight to the target size.
_TFDS_SKIP_DECODING = ("imagenet2012",)
# Manually downloaded datasets: where tfds looks for the files (tfds's manual_dir) and which files.
_TFDS_MANUAL = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org)"}
FOLDER_PREFIX = "folder:"
CELEB_A_PREFIX = "celeb_a:"  # then one of the 40 binary attributes, e.g. 'celeb_a:Smiling'
CELEB_A_SPLITS = ("train", "validation", "test")
# celeb_a's aligned faces are 218x178 (H x W) with the eyes at a fixed height; the centred 148x148 square keeps
# the face from the eyebrows to the chin, mouth included (the crop of the common CelebA-64 setups).
CELEB_A_FACE_CROP = 148
# Below this many files the decode takes well under a second and threads would save little.
_MIN_FILES_FOR_THREADS = 256
# Files (or zip entries, by their declared size) larger than this are skipped unread: no image of a training set
# is that big, and a zip bomb would otherwise be inflated into memory. Images of more than
# PIL.Image.MAX_IMAGE_PIXELS pixels (decompression bombs) are skipped before decoding.
MAX_FILE_BYTES = 256 * 2**20
_CACHE_FORMAT = 1

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Decoded:
  images: np.ndarray  # uint8 (N, S, S, C)
  labels: np.ndarray  # int32 (N,)
  class_names: List[str]
  skipped: int  # files that failed to decode


def describe_valid_datasets() -> str:
  return (", ".join(repr(name) for name in TFDS_DATASETS) + ", 'celeb_a:ATTRIBUTE' (e.g. 'celeb_a:Smiling'), "
          "or 'folder:PATH' (a directory or a .zip)")


def to_array(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
  """A decoded PIL image as uint8 (image_size, image_size, channels), resized like Keras `target_size`."""
  if image.mode.startswith("I;16") or image.mode == "I":
    # Pillow's convert('L'/'RGB') clips 16-bit values at 255 instead of rescaling them.
    pixels = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
  elif image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")  # Pillow warns when a transparent palette image goes straight to RGB
  image = image.convert("L" if channels == 1 else "RGB")
  if image.size != (image_size, image_size):
    image = image.resize((image_size, image_size), Image.BILINEAR)
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if channels == 1 else array


def decode_bytes(data: Optional[bytes], image_size: int, channels: int,
                 crop: Optional[Callable[[Image.Image], Image.Image]] = None) -> Optional[np.ndarray]:
  """An encoded image as uint8 (image_size, image_size, channels), `crop` applied first (celeb_a's face_crop),
  or None where it is unreadable (data None), corrupt, not an image or over PIL.Image.MAX_IMAGE_PIXELS pixels."""
  if data is None:  # unreadable, see read_file
    return None
  try:
    with Image.open(io.BytesIO(data)) as image:
      # Pillow only warns between MAX_IMAGE_PIXELS and twice that, then decodes: skip those before decoding too.
      if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
        return None
      image.load()
      return to_array(crop(image) if crop else image, image_size, channels)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    return None  # PIL's errors for truncated, empty, unrecognised or oversized files


def read_file(path: str) -> Optional[bytes]:
  try:
    if os.stat(path).st_size > MAX_FILE_BYTES:
      return None
    return pathlib.Path(path).read_bytes()
  except OSError:  # a dangling symlink, no permission, a file removed since listing: skipped and counted
    return None


def read_entry(archive: zipfile.ZipFile, name: str) -> Optional[bytes]:
  try:
    if archive.getinfo(name).file_size > MAX_FILE_BYTES:  # zipfile never inflates past the declared size
      return None
    return archive.read(name)
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError):
    return None  # corrupt data (bad CRC), an encrypted entry, an unsupported compression: skipped and counted


def _read_all(root: str, names: Sequence[str]) -> List[Optional[bytes]]:
  """The encoded files (None: unreadable), read once in this process: each ZipFile open re-parses the whole
  central directory."""
  if os.path.isdir(root):
    return [read_file(os.path.join(root, name)) for name in names]
  with zipfile.ZipFile(root) as archive:
    return [read_entry(archive, name) for name in names]


def _decode_range(encoded: Sequence[Optional[bytes]], start: int, stop: int, images: np.ndarray,
                  decoded: np.ndarray, image_size: int, channels: int) -> None:
  """Decodes encoded[start:stop] into the shared output arrays: no per-image copy of a big source is held."""
  for i in range(start, stop):
    array = decode_bytes(encoded[i], image_size, channels)
    if array is not None:
      images[i], decoded[i] = array, True


def _decode_all(root: str, names: Sequence[str], image_size: int, channels: int):
  """(uint8 images, decoded mask) of all `names`, in order, in threads for big sources.

  Threads, not processes: Pillow releases the GIL while it decodes, converts and resizes, and forking a process
  that has started JAX's threads can deadlock (Python warns about it), while spawned workers would re-run the
  caller's __main__, breaking scripts and notebooks without an `if __name__ == '__main__'` guard.
  """
  encoded = _read_all(root, names)
  images = np.zeros((len(names), image_size, image_size, channels), np.uint8)
  decoded = np.zeros(len(names), bool)
  workers = min(os.cpu_count() or 1, 8)
  with warnings.catch_warnings():
    # decode_bytes skips what Pillow would warn about. catch_warnings changes process-wide state and is not
    # thread-safe, so it is entered once here, around every worker, rather than per image.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if len(names) < _MIN_FILES_FOR_THREADS or workers == 1:
      _decode_range(encoded, 0, len(names), images, decoded, image_size, channels)
      return images, decoded
    chunk = -(-len(names) // (4 * workers))  # a few chunks per thread even out slow and fast files
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cnnjax-decode") as pool:
      tasks = [pool.submit(_decode_range, encoded, start, min(start + chunk, len(names)), images, decoded,
                           image_size, channels) for start in range(0, len(names), chunk)]
      for task in tasks:
        task.result()  # re-raises a worker's unexpected error here
  return images, decoded


def _is_image_name(name: str) -> bool:
  parts = name.split("/")
  # Skip hidden files and macOS resource forks (__MACOSX/..., ._x.jpg): they carry image extensions.
  if any(part.startswith(".") or part == "__MACOSX" for part in parts[:-1]) or parts[-1].startswith("."):
    return False
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _zip_image_names(path: str) -> List[str]:
  with zipfile.ZipFile(path) as archive:
    names = [info.filename for info in archive.infolist() if not info.is_dir()]
  for name in names:
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "" or parts[0].endswith(":") or ".." in parts:  # absolute, a drive, or climbing out
      raise ValueError(f"{path} holds an unsafe entry {name!r} (absolute path or '..'); rebuild the zip "
                       "with paths relative to its root")
  return [name for name in names if _is_image_name(name)]


def _folder_image_names(path: str) -> List[str]:
  names = []
  seen = set()  # real directories walked: a symlink to an ancestor would repeat every image below it
  for directory, subdirectories, files in os.walk(path, followlinks=True):
    real = os.path.realpath(directory)
    if real in seen:
      subdirectories[:] = []
      continue
    seen.add(real)
    subdirectories.sort()
    relative = pathlib.Path(directory).relative_to(path).as_posix()
    for file in files:
      names.append(file if relative == "." else f"{relative}/{file}")
  return [name for name in names if _is_image_name(name) and not _is_special(os.path.join(path, name))]


def _is_special(path: str) -> bool:
  """A FIFO, socket or device named like an image: reading a FIFO would block forever."""
  try:
    return not stat.S_ISREG(os.stat(path).st_mode)
  except OSError:
    return False  # dangling symlink: kept, so that it is counted as a file that failed to read


def _labelled(names: Sequence[str], source: str) -> Tuple[List[str], np.ndarray, List[str]]:
  """(files with a class, their labels, sorted class names): class = first component below the shared folder."""
  folders = [posixpath.dirname(name) for name in names if "/" in name]  # top-level files have no class
  shared = posixpath.commonpath(folders) if folders else ""
  depth = len(shared.split("/")) if shared else 0
  files, classes = [], []
  for name in names:
    parts = name.split("/")
    if len(parts) > depth + 1:  # files directly in the shared folder have no class, as in Keras
      files.append(name)
      classes.append(parts[depth])
  class_names = sorted(set(classes))
  if names and not files:
    raise ValueError(f"{source}: all {len(names)} images are in one folder ({shared or '.'}); a classifier "
                     "needs at least 2 classes: put each class's images in its own subfolder")
  if not files:
    raise ValueError(f"{source} has no images in class subfolders (expected CLASS/IMAGE with extensions "
                     f"{', '.join(IMAGE_EXTENSIONS)})")
  if len(class_names) < 2:
    raise ValueError(f"{source} has {len(class_names)} class folder ({class_names}); a classifier needs at "
                     "least 2: put each class's images in its own subfolder")
  index = {name: i for i, name in enumerate(class_names)}
  order = sorted(range(len(files)), key=lambda i: (index[classes[i]], files[i]))
  return [files[i] for i in order], np.array([index[classes[i]] for i in order], np.int32), class_names


def _fingerprint(path: str, names: Sequence[str]) -> str:
  """Changes whenever the zip or a listed file changes (size or mtime), so a stale cache is never read."""
  digest = hashlib.sha256(os.path.abspath(path).encode())
  for name in names or [""]:
    try:
      info = os.stat(os.path.join(path, name) if name else path)
      digest.update(f"{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    except OSError:  # a dangling symlink
      digest.update(f"{name}:missing\n".encode())
  return digest.hexdigest()


def default_cache_dir() -> str:
  return os.environ.get("CNNJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cnnjax")


def _read_cache(cache_file: str) -> Optional[Decoded]:
  try:
    with np.load(cache_file, allow_pickle=False) as cached:
      return Decoded(cached["images"], cached["labels"], [str(n) for n in cached["class_names"]],
                     int(cached["skipped"]))
  except (OSError, KeyError, ValueError):
    return None  # missing or unreadable cache: decode again


def _write_cache(cache_file: str, decoded: Decoded) -> None:
  """Atomic: concurrent runs (or a crash) never leave a half-written cache behind."""
  directory = os.path.dirname(cache_file)
  try:
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(handle, "wb") as file:
      np.savez(file, images=decoded.images, labels=decoded.labels,
               class_names=np.array(decoded.class_names), skipped=decoded.skipped)
    os.replace(temporary, cache_file)
  except OSError as error:  # a read-only home must not stop training
    log.warning("could not write the decoded-image cache %s: %s", cache_file, error)


def _check_folder(path: str) -> bool:
  """Whether `path` is a zip (else a directory); a one-line error if it is neither."""
  if not os.path.exists(path):
    raise ValueError(f"folder:{path} does not exist; give an existing directory or .zip of class subfolders")
  is_zip = os.path.isfile(path)
  if is_zip and not zipfile.is_zipfile(path):
    raise ValueError(f"folder:{path} is a file but not a zip; give a directory or a .zip of class subfolders")
  return is_zip


def _keep_first(files: List[str], labels: np.ndarray, num_classes: int, limit_per_class: Optional[int]):
  """The first `limit_per_class` files of each class, in class order (all of them for None)."""
  if limit_per_class is None:
    return files, labels
  keep = np.concatenate([np.flatnonzero(labels == c)[:limit_per_class] for c in range(num_classes)])
  return [files[i] for i in keep], labels[keep]


def list_folder(path: str, limit_per_class: Optional[int] = None) -> Tuple[List[str], np.ndarray, List[str]]:
  """(image files relative to `path`, their int32 labels, the sorted class names) of a Keras-layout directory
  or .zip, sorted by class then name: the order `load_folder` decodes them in."""
  names = _zip_image_names(path) if _check_folder(path) else _folder_image_names(path)
  files, labels, class_names = _labelled(names, f"folder:{path}")
  files, labels = _keep_first(files, labels, len(class_names), limit_per_class)
  return files, labels, class_names


def load_folder(path: str, *, image_size: int, channels: int, limit_per_class: Optional[int] = None,
                cache_dir: Optional[str] = None) -> Decoded:
  """Images of a Keras-layout directory or .zip. Cached under `cache_dir` ('' disables the cache)."""
  is_zip = _check_folder(path)
  # A zip's own stat identifies its content, so a cached zip is read without listing its 50,000 entries.
  names = None if is_zip else _folder_image_names(path)
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  cache_file = None
  if cache_dir:
    key = hashlib.sha256(f"{_CACHE_FORMAT}:{_fingerprint(path, names)}:{image_size}:{channels}:"
                         f"{limit_per_class}".encode()).hexdigest()[:24]
    cache_file = os.path.join(cache_dir, f"{pathlib.Path(path).stem}-{image_size}px-{channels}ch-{key}.npz")
    result = _read_cache(cache_file)
  if not cache_file or result is None:
    result = _decode_folder(path, _zip_image_names(path) if is_zip else names, image_size, channels,
                            limit_per_class)
    if cache_file:
      _write_cache(cache_file, result)
  elif result.skipped:  # _decode_folder names them when it decodes
    log.warning("skipped %d of %d files that failed to decode", result.skipped,
                result.skipped + len(result.labels))
  return result


def _decode_folder(path, names, image_size, channels, limit_per_class) -> Decoded:
  files, labels, class_names = _labelled(names, f"folder:{path}")
  files, labels = _keep_first(files, labels, len(class_names), limit_per_class)
  started = time.perf_counter()
  images, decoded = _decode_all(path, files, image_size, channels)
  log.info("decoded %d images from %s in %.1f s", len(files), path, time.perf_counter() - started)
  if not decoded.any():
    raise ValueError(f"folder:{path}: none of its {len(files)} image files decoded; are they images?")
  if not decoded.all():
    failed = [name for name, ok in zip(files, decoded) if not ok]
    log.warning("skipped %d of %d files that failed to decode (unreadable, corrupt, truncated, not images, or "
                "over %d pixels) in %s, e.g. %s", len(failed), len(files), Image.MAX_IMAGE_PIXELS, path,
                ", ".join(failed[:3]))
  return Decoded(images[decoded], labels[decoded], class_names, skipped=int(np.sum(~decoded)))


def _tfds_load(name: str, split: str, data_dir: Optional[str], **options):
  """tfds.load(name, split) -> (dataset, info), every tfds failure turned into a one-line ValueError."""
  import tensorflow_datasets as tfds  # heavy: imported only when a tfds dataset is asked for

  try:
    return tfds.load(name, split=split, data_dir=data_dir, with_info=True, shuffle_files=False, **options)
  except Exception as error:  # tfds fails in many ways (offline, missing extras, partial download): name the fix
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    local = {"cifar10": "cifar10_jpeg", "cats_vs_dogs": "cats_vs_dogs"}.get(name)
    fallback = f", or use 'folder:PATH' with a local copy (e.g. shared/data/{local}/train.zip)" if local else ""
    if name in _TFDS_MANUAL:
      manual = os.path.join(data_dir or "~/tensorflow_datasets", "downloads", "manual")
      raise ValueError(f"tfds could not load {name!r} from data_dir={data_dir!r} ({type(error).__name__}: "
                       f"{reason[:300]}); put {_TFDS_MANUAL[name]} in {manual} and rerun (tfds prepares it "
                       "once), or use 'folder:PATH' with one subfolder per class") from error
    raise ValueError(f"tfds could not load {name!r} from data_dir={data_dir!r} ({type(error).__name__}: {reason}); "
                     f"prepare it there with internet access{fallback}") from error


# Examples per split as the tfds catalog lists them: the size estimate (`tfds_num_examples`) of a dataset not
# prepared yet, whose own metadata tfds only writes when it prepares it.
TFDS_NUM_EXAMPLES = {("cifar10", "train"): 50_000, ("cats_vs_dogs", "train"): 23_262,
                     ("imagenet2012", "train"): 1_281_167, ("imagenet2012", "validation"): 50_000,
                     ("celeb_a", "train"): 162_770, ("celeb_a", "validation"): 19_867, ("celeb_a", "test"): 19_962}


def tfds_num_examples(name: str, split: str, data_dir: Optional[str]) -> int:
  """Examples in a split: from the prepared dataset's metadata, else the catalog's count (TFDS_NUM_EXAMPLES)."""
  import tensorflow_datasets as tfds

  try:
    return int(tfds.builder(name, data_dir=data_dir).info.splits[split].num_examples)
  except Exception:  # not prepared (no split metadata yet), or a name tfds does not know: the catalog's count
    return TFDS_NUM_EXAMPLES.get((name, split), 0)


def tfds_class_names(name: str, data_dir: Optional[str]) -> List[str]:
  """The class names of a tfds dataset's 'label' feature, in label order."""
  import tensorflow_datasets as tfds

  return list(tfds.builder(name, data_dir=data_dir).info.features["label"].names)


def tfds_data_source(name: str, split: str, data_dir: Optional[str]):
  """tfds's random-access source of a split (array_record files; prepared that way on first use), images left
  encoded, or a one-line ValueError saying how to get one."""
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()},
                            builder_kwargs={"file_format": "array_record"})
  except Exception as error:  # tfds fails in many ways (tfrecord files, offline, manual files missing)
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    if name in _TFDS_MANUAL:
      manual = os.path.join(data_dir or "~/tensorflow_datasets", "downloads", "manual")
      raise ValueError(f"tfds could not open {name!r} from data_dir={data_dir!r} for streaming "
                       f"({type(error).__name__}: {reason}); put {_TFDS_MANUAL[name]} in {manual} and rerun (tfds "
                       "prepares it once, as array_record files), or use 'folder:PATH' with one subfolder per "
                       "class") from error
    raise ValueError(f"tfds could not open {name!r} split {split!r} in data_dir={data_dir!r} for streaming "
                     f"({type(error).__name__}: {reason}); streaming reads tfds's array_record files: prepare them "
                     f"with `tfds build {name} --file_format=array_record --data_dir=DATA_DIR`, or raise "
                     "config.in_memory_limit_gb to decode the dataset into memory") from error


def load_tfds(name: str, *, image_size: int, channels: int, limit_per_class: Optional[int] = None,
              data_dir: Optional[str] = None, split: str = "train") -> Decoded:
  """A split of a tfds dataset, 'train' by default (the only split cats_vs_dogs has; CIFAR-10's test split is not
  used; imagenet2012's 'validation' is its validation set). Reading stops once every class has limit_per_class
  images; images that fail to decode (imagenet2012 holds a few CMYK and PNG files named .JPEG: Pillow reads
  those) are skipped and counted."""
  import tensorflow_datasets as tfds

  skip_decoding = name in _TFDS_SKIP_DECODING
  dataset, info = _tfds_load(name, split, data_dir,
                             **({"decoders": {"image": tfds.decode.SkipDecoding()}} if skip_decoding else {}))
  class_names = list(info.features["label"].names)
  try:
    capacity = info.splits[split].num_examples
  except KeyError:  # no split metadata (tfds mock data): grown as needed below
    capacity = 4096
  if limit_per_class is not None:
    capacity = min(capacity, limit_per_class * len(class_names))
  # Filled in place: a list of arrays stacked at the end would need twice the memory of the dataset.
  images = np.zeros((capacity, image_size, image_size, channels), np.uint8)
  labels = np.zeros(capacity, np.int32)
  counts = np.zeros(len(class_names), int)
  kept = skipped = 0
  for example in tfds.as_numpy(dataset):
    label = int(example["label"])
    if limit_per_class is not None and counts[label] >= limit_per_class:
      if counts.min() >= limit_per_class:
        break
      continue
    if kept == capacity:  # more examples than expected: double the arrays
      capacity = max(1, 2 * capacity)
      images = np.concatenate([images, np.zeros((capacity - len(images), *images.shape[1:]), np.uint8)])
      labels = np.concatenate([labels, np.zeros(capacity - len(labels), np.int32)])
    if skip_decoding:
      array = decode_bytes(example["image"], image_size, channels)
      if array is None:
        skipped += 1
        continue
    else:
      pixels = example["image"]
      array = to_array(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels), image_size, channels)
    images[kept], labels[kept] = array, label
    counts[label] += 1
    kept += 1
  if kept == 0:
    raise ValueError(f"tfds {name!r} split {split!r} in data_dir={data_dir!r} has no usable image; prepare the "
                     "dataset again")
  if skipped:
    log.warning("skipped %d images of tfds %s %s that failed to decode", skipped, name, split)
  return Decoded(images[:kept], labels[:kept], class_names, skipped=skipped)


def celeb_a_class_names(attribute: str) -> List[str]:
  """Label 0 and 1 of a celeb_a attribute: 'Smiling' -> ['not smiling', 'smiling']."""
  name = attribute.replace("_", " ").lower()
  return [f"not {name}", name]


def face_crop(image: Image.Image, side: int = CELEB_A_FACE_CROP) -> Image.Image:
  """The centred `side` x `side` square of an aligned celeb_a face (smaller images: their centred square)."""
  side = min(side, *image.size)
  left, top = (image.width - side) // 2, (image.height - side) // 2
  return image.crop((left, top, left + side, top + side))


def check_celeb_a_attribute(attribute: str, data_dir: Optional[str]) -> None:
  """A one-line error unless `attribute` is one of celeb_a's 40 binary attributes."""
  import tensorflow_datasets as tfds

  attributes = sorted(tfds.builder("celeb_a", data_dir=data_dir).info.features["attributes"].keys())
  if attribute not in attributes:
    raise ValueError(f"celeb_a has no attribute {attribute!r}; use 'celeb_a:ATTRIBUTE' with one of "
                     f"{', '.join(attributes)}")


def load_celeb_a(attribute: str, *, image_size: int, channels: int, limit_per_class: Optional[int] = None,
                 data_dir: Optional[str] = None) -> Dict[str, Decoded]:
  """celeb_a's train, validation and test splits, faces cropped (`face_crop`) and resized to `image_size`,
  labelled 1 where `attribute` (one of its 40 binary attributes, e.g. 'Smiling') holds, else 0.

  limit_per_class keeps the first N images of each class in every split. JPEGs are decoded only for the images
  kept, so a limited run reads the records but does not decode all 200,000 faces.
  """
  import tensorflow_datasets as tfds

  check_celeb_a_attribute(attribute, data_dir)
  class_names = celeb_a_class_names(attribute)
  decoded = {}
  for split in CELEB_A_SPLITS:
    # Undecoded JPEG bytes: tf would otherwise decode every face, including those limit_per_class skips.
    dataset, _ = _tfds_load("celeb_a", split, data_dir, decoders={"image": tfds.decode.SkipDecoding()})
    images, labels = [], []
    counts = np.zeros(2, int)
    for example in tfds.as_numpy(dataset):
      label = int(example["attributes"][attribute])
      if limit_per_class is not None and counts[label] >= limit_per_class:
        continue
      counts[label] += 1
      with Image.open(io.BytesIO(example["image"])) as image:
        images.append(to_array(face_crop(image), image_size, channels))
      labels.append(label)
    if not images:
      raise ValueError(f"celeb_a's {split} split is empty in data_dir={data_dir!r}; prepare the dataset again")
    decoded[split] = Decoded(np.stack(images), np.array(labels, np.int32), class_names, skipped=0)
  return decoded
