"""Streaming input: images read and decoded while a run trains, through grain, for datasets whose decoded arrays
would exceed `in_memory_limit_gb` (pipeline.load decides; 0 streams every dataset).

A `StreamingSet` stands where an in-memory `ImageSet` would: a random-access source (the files of a folder or zip,
or the records of a tfds array_record data source) and the record numbers of one split. `pipeline.batches`
iterates either with the same (seed, epoch) order and the same share of each global batch per process
(order.process_positions), so while every file reads, a streamed run feeds each step exactly the images an
in-memory run would, and each host reads only its own share.

Undecodable files are skipped and counted when they are read (nothing tells them apart before): a training batch
takes the next readable images of its process's stream instead, so from the first skip on a process is further
into its stream than `batch * share`. That `position` is the whole state of a training reader; checkpoints save it
(loop.TrainBatches) and a run resumed mid-epoch reads on from exactly there. Evaluation keeps every image at its
place and masks a skipped one out.

Decoding runs on the prefetch threads of grain's MapDataset.to_iter_dataset (ReadOptions.num_threads), each
reader bounded to a few batches ahead: Pillow releases the GIL while it decodes and resizes, and threads never
fork the process, which has started JAX (a fork can deadlock it; Python warns about it). Spawned worker processes
would re-import the caller's __main__, which breaks scripts and notebooks without a main guard.
"""
import dataclasses
import os
import threading
import warnings
import zipfile
from typing import Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import grain
import numpy as np
from PIL import Image

from cnnjax.data import order
from cnnjax.data import sources

# Decoding threads per reader: enough to keep a few cores busy (Pillow holds the GIL only between images).
MAX_THREADS = 16
# A training reader reads at most this many times its stream before giving up on finding readable images.
_MAX_PASSES = 2


class FileSource:
  """The images of a Keras-layout folder or zip by number: `source[i]` -> (uint8 image or None, label).

  Args:
    root: the directory or .zip.
    files: image paths relative to `root` (sources.list_folder).
    labels: their int labels.
    image_size, channels: what images are decoded to (sources.to_array).
  """

  def __init__(self, root: str, files: Sequence[str], labels: np.ndarray, image_size: int, channels: int):
    self.root, self.files, self.labels = root, list(files), np.asarray(labels, np.int32)
    self.image_size, self.channels = image_size, channels
    self.is_zip = os.path.isfile(root)
    # One ZipFile per thread: the readers of one ZipFile share its file position.
    self._local = threading.local()

  def __len__(self) -> int:
    return len(self.files)

  def name(self, i: int) -> str:
    """Where image i comes from: the file's path (for a zip, the zip's path joined with the entry's name)."""
    return os.path.join(self.root, self.files[i])

  def label(self, i: int) -> int:
    return int(self.labels[i])

  def _encoded(self, i: int) -> Optional[bytes]:
    if not self.is_zip:
      return sources.read_file(os.path.join(self.root, self.files[i]))
    archive = getattr(self._local, "archive", None)
    if archive is None:
      archive = self._local.archive = zipfile.ZipFile(self.root)
    return sources.read_entry(archive, self.files[i])

  def __getitem__(self, i: int) -> Tuple[Optional[np.ndarray], int]:
    return sources.decode_bytes(self._encoded(i), self.image_size, self.channels), self.label(i)


class TfdsSource:
  """The records of one split of a tfds dataset by number: `source[i]` -> (uint8 image or None, label).

  Images are decoded here from the encoded bytes tfds stores (so a skipped record costs no decode), celeb_a's
  cropped to the face (sources.face_crop) and labelled by `attribute`; other datasets by their 'label'.
  """

  def __init__(self, name: str, split: str, data_dir: Optional[str], image_size: int, channels: int,
               attribute: Optional[str] = None):
    self.dataset, self.split, self.attribute = name, split, attribute
    self.image_size, self.channels = image_size, channels
    self.records = sources.tfds_data_source(name, split, data_dir)

  def __len__(self) -> int:
    return len(self.records)

  def name(self, i: int) -> str:
    return f"{self.dataset}/{self.split}/{i}"

  def _label(self, record) -> int:
    return int(record["attributes"][self.attribute]) if self.attribute else int(record["label"])

  def labels(self) -> np.ndarray:
    """Every record's label (reads every record once; their images stay encoded)."""
    return np.array([self._label(self.records[i]) for i in range(len(self.records))], np.int32)

  def __getitem__(self, i: int) -> Tuple[Optional[np.ndarray], int]:
    record = self.records[i]
    crop = sources.face_crop if self.attribute else None
    return sources.decode_bytes(record["image"], self.image_size, self.channels, crop), self._label(record)


@dataclasses.dataclass
class StreamingSet:
  """Images of one split read on demand: records `index` of `source`, in that order."""
  source: object  # FileSource or TfdsSource: source[i] -> (uint8 image or None, label)
  index: np.ndarray  # int64 record numbers
  image_shape: Tuple[int, int, int]
  skipped: Set[int] = dataclasses.field(default_factory=set)  # records found undecodable so far

  def __len__(self) -> int:
    return len(self.index)

  def name(self, position: int) -> str:
    return self.source.name(int(self.index[position]))


def _record(images: StreamingSet, position: int) -> Tuple[Optional[np.ndarray], int]:
  return images.source[int(images.index[position])]


def _elements(images: StreamingSet, positions: Sequence[int], buffer: int) -> Iterator:
  """(position, image or None, label) for each of `positions`, in order, decoded on grain's prefetch threads
  at most `buffer` elements ahead."""
  threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, buffer))
  dataset = grain.MapDataset.source(np.asarray(positions, np.int64)).map(
      lambda position: (int(position), *_record(images, int(position))))
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer)))


def _quiet_bomb_warnings() -> None:
  """Pillow warns at open() about images of more pixels than PIL.Image.MAX_IMAGE_PIXELS; sources.decode_bytes
  skips those (and counts them), so the warning only repeats that. warnings.catch_warnings is process-wide and
  not thread-safe, so the decoding threads cannot scope it: each reader installs a process-wide filter for that
  category alone (warnings replaces an identical filter rather than adding another)."""
  warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _skip(images: StreamingSet, position: int) -> None:
  record = int(images.index[position])
  if record not in images.skipped:
    images.skipped.add(record)
    sources.log.warning("skipped %s: it failed to decode (unreadable, corrupt, truncated, not an image, or over "
                        "%d pixels); %d skipped so far", images.name(position), Image.MAX_IMAGE_PIXELS,
                        len(images.skipped))


class TrainReader:
  """This process's training batches `batch`..`num_batches - 1` of one epoch, read from `position` in its stream
  (`stream`: positions of the epoch's order, order.process_positions) on; undecodable images are skipped and
  replaced by the next readable ones (after the stream's end, its start again).

  After each batch, (`batch`, `position`) say where the next one starts: what a checkpoint saves to resume exactly.
  """

  def __init__(self, images: StreamingSet, stream: np.ndarray, share: int, batch: int, num_batches: int,
               position: int):
    if not 0 <= position < _MAX_PASSES * len(stream):
      raise ValueError(f"a streamed epoch cannot resume at position {position} of a stream of {len(stream)} "
                       "images: the checkpoint was written for another dataset; use a new workdir")
    _quiet_bomb_warnings()
    self.images, self.share, self.batch, self.num_batches, self.position = images, share, batch, num_batches, position
    self.stream_size = len(stream)
    wrapped = stream[np.arange(position, _MAX_PASSES * len(stream)) % len(stream)]
    self._elements = _elements(images, wrapped, buffer=2 * share)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.batch >= self.num_batches:
      raise StopIteration
    batch_images, labels = [], []
    while len(batch_images) < self.share:
      element = next(self._elements, None)
      if element is None:
        raise ValueError(f"too many images fail to decode: this process read all {self.stream_size} images of "
                         "its share twice without filling the epoch's batches; check the dataset's files")
      position, image, label = element
      self.position += 1
      if image is None:
        _skip(self.images, position)
        continue
      batch_images.append(image)
      labels.append(label)
    self.batch += 1
    return {"images": np.stack(batch_images), "labels": np.asarray(labels, np.int32)}


def train_batches(images: StreamingSet, *, batch_size: int, seed: int, epoch: int, start_batch: int,
                  num_batches: int, process_index: int, process_count: int,
                  position: Optional[int] = None) -> TrainReader:
  """Training batches `start_batch`..`num_batches - 1` of `epoch` for this process (see pipeline.batches).

  Args:
    position: where this process's stream resumes (a reader's `position` at `start_batch`, from a checkpoint);
      None: `start_batch * share`, where it is when no image before was skipped.
  """
  share = batch_size // process_count
  stream = order.epoch_permutation(len(images), seed, epoch)[
      order.process_positions(len(images), batch_size, process_index, process_count)]
  return TrainReader(images, stream, share, start_batch, num_batches,
                     start_batch * share if position is None else position)


def eval_batches(images: StreamingSet, *, batch_size: int, start_batch: int, num_batches: int,
                 process_index: int, process_count: int) -> Iterator[dict]:
  """Every image once in order, this process's share of each global batch, the last padded, with 'mask' 0 for
  padding and for images that fail to decode (pipeline.batches' evaluation batches)."""
  _quiet_bomb_warnings()
  share = batch_size // process_count
  first = np.arange(start_batch, num_batches) * batch_size + process_index * share
  slots = (first[:, None] + np.arange(share)).reshape(-1)
  elements = _elements(images, slots[slots < len(images)], buffer=2 * share)
  for start in range(0, len(slots), share):
    batch = {"images": np.zeros((share, *images.image_shape), np.uint8), "labels": np.zeros(share, np.int32),
             "mask": np.zeros(share, np.float32)}
    for slot in range(share):
      if slots[start + slot] >= len(images):
        break
      position, image, label = next(elements)
      if image is None:
        _skip(images, position)
        continue
      batch["images"][slot], batch["labels"][slot], batch["mask"][slot] = image, label, 1.0
    yield batch


def open_images(dataset: str, *, image_size: int, channels: int = 3, data_dir: Optional[str] = None,
                limit_per_class: Optional[int] = None, split: str = "train") -> Tuple[StreamingSet, List[str]]:
  """(every image of a dataset as one StreamingSet, the class names), nothing decoded yet: a folder/zip's images in
  sources.list_folder's order (class, then path), or a tfds split's records in their order ('celeb_a:ATTRIBUTE'
  labelled by the attribute). Read it with `read_chunks`; `StreamingSet.name(position)` names each image.

  Args:
    dataset: config.dataset's syntax ('folder:PATH', a tfds name, 'celeb_a:ATTRIBUTE').
    image_size, channels: what each image is decoded to (resized as Keras `target_size`; 1 or 3 channels).
    data_dir: tfds data directory (tfds datasets must be prepared as array_record: sources.tfds_data_source).
    limit_per_class: only the first N images of each class (tfds: reads every record's label first).
    split: the tfds split (folders have one).
  """
  shape = (image_size, image_size, channels)
  if dataset.startswith(sources.FOLDER_PREFIX):
    path = os.path.expanduser(dataset[len(sources.FOLDER_PREFIX):])
    files, labels, class_names = sources.list_folder(path, limit_per_class)
    return StreamingSet(FileSource(path, files, labels, image_size, channels), np.arange(len(files)), shape), class_names
  attribute = dataset[len(sources.CELEB_A_PREFIX):] if dataset.startswith(sources.CELEB_A_PREFIX) else None
  if attribute is not None:
    sources.check_celeb_a_attribute(attribute, data_dir)
    name, class_names = "celeb_a", sources.celeb_a_class_names(attribute)
  elif dataset in sources.TFDS_DATASETS:
    name, class_names = dataset, sources.tfds_class_names(dataset, data_dir)
  else:
    raise ValueError(f"unknown dataset {dataset!r}; use {sources.describe_valid_datasets()}")
  source = TfdsSource(name, split, data_dir, image_size, channels, attribute)
  index = order.first_per_class(source.labels(), limit_per_class) if limit_per_class else np.arange(len(source))
  return StreamingSet(source, index, shape), class_names


class Chunk(NamedTuple):
  """Consecutive images of a StreamingSet: their positions, uint8 pixels (zeros where `ok` is False: the file
  failed to decode), labels and names (file paths, or 'DATASET/SPLIT/RECORD' for tfds)."""
  positions: np.ndarray
  images: np.ndarray
  labels: np.ndarray
  ok: np.ndarray
  names: List[str]


def read_chunks(images: StreamingSet, chunk_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Chunk]:
  """The images at positions [start, stop) in order, `chunk_size` at a time (the last chunk may be shorter),
  decoded on grain's prefetch threads while the caller works on the previous chunk.

  For whole-dataset work (explanations, features): positions are stable, so a job can shard them over processes
  and resume at any chunk. Undecodable images keep their place (`ok` False) and are counted in images.skipped.
  """
  stop = len(images) if stop is None else stop
  if chunk_size < 1 or not 0 <= start <= stop <= len(images):
    raise ValueError(f"read_chunks needs chunk_size >= 1 and 0 <= start <= stop <= {len(images)}, got chunk_size "
                     f"{chunk_size}, start {start}, stop {stop}")
  _quiet_bomb_warnings()
  elements = _elements(images, range(start, stop), buffer=2 * chunk_size)
  for first in range(start, stop, chunk_size):
    count = min(chunk_size, stop - first)
    chunk = Chunk(np.arange(first, first + count), np.zeros((count, *images.image_shape), np.uint8),
                  np.zeros(count, np.int32), np.zeros(count, bool), [images.name(p) for p in range(first, first + count)])
    for slot in range(count):
      position, image, label = next(elements)
      chunk.labels[slot] = label
      if image is None:
        _skip(images, position)
      else:
        chunk.images[slot], chunk.ok[slot] = image, True
    yield chunk


def head(images: StreamingSet, count: int) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images, labels) of the first `count` readable images (fewer if the set has fewer)."""
  pixels, labels = [np.zeros((0, *images.image_shape), np.uint8)], [np.zeros(0, np.int32)]
  found = 0
  if count > 0 and len(images):
    for chunk in read_chunks(images, min(count, len(images))):
      pixels.append(chunk.images[chunk.ok])
      labels.append(chunk.labels[chunk.ok])
      found += int(chunk.ok.sum())
      if found >= count:
        break
  return np.concatenate(pixels)[:count], np.concatenate(labels)[:count]
