"""Splits and batches over uint8 images: decoded into memory, or streamed (streaming.py) when their decoded
arrays would exceed `in_memory_limit_gb`.

`load` decodes a dataset once and carves a stratified validation split from its training images (for every
dataset, CIFAR-10 included: its test split stays untouched, so `validation_split` means the same everywhere
and matches Keras `validation_split`-style experiments on the shared zips, which hold no test split). The
exception is celeb_a, whose official train/validation/test partition keeps each person in one split only:
carving validation images out of its train split would put the same faces on both sides; and imagenet2012,
whose official validation split is the one every published top-1 is measured on.

`batches` is a pure function of (seed, epoch, start_batch): a training epoch is one seeded permutation,
so resuming at batch k of epoch e replays exactly what an uninterrupted run would have seen, and every
host, whatever their number, agrees on the global batch and takes its own contiguous slice of it. Streamed
sets follow the same order (order.py); a streamed training epoch that skipped undecodable files resumes from
its reader's `position` (streaming.TrainReader), which checkpoints save.
"""
import dataclasses
import os
from typing import Iterator, List, Optional, Union

import numpy as np

from cnnjax.data import order
from cnnjax.data import sources
from cnnjax.data import streaming
from cnnjax.data.order import epoch_permutation, num_batches


@dataclasses.dataclass
class ImageSet:
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int32 (N,)

  def __len__(self) -> int:
    return len(self.labels)


Images = Union[ImageSet, streaming.StreamingSet]


@dataclasses.dataclass
class Splits:
  train: Images
  validation: Optional[Images]  # None when validation_split == 0
  class_names: List[str]
  skipped: int  # files that failed to decode (streamed sets count theirs as they read: StreamingSet.skipped)
  test: Optional[Images] = None  # only for datasets with their own test split (celeb_a)


def head(images: Images, count: int) -> ImageSet:
  """The first `count` images of a set, in memory (a streamed set's first readable ones)."""
  if isinstance(images, ImageSet):
    return ImageSet(images.images[:count], images.labels[:count])
  return ImageSet(*streaming.head(images, count))


def load(dataset: str, *, image_size: int, channels: int = 3, validation_split: float = 0.1, seed: int = 0,
         data_dir: Optional[str] = None, limit_per_class: Optional[int] = None,
         cache_dir: Optional[str] = None, in_memory_limit_gb: float = 2.0) -> Splits:
  """Decodes `dataset` to uint8 (or opens it for streaming) and splits off a stratified validation set fixed by
  `seed`.

  Args:
    dataset: 'cifar10', 'cats_vs_dogs' (tfds, from `data_dir`), 'imagenet2012' (tfds, prepared from the manually
      downloaded tars in `data_dir`/downloads/manual; its own validation split: validation_split and seed do not
      apply), 'celeb_a:ATTRIBUTE' (tfds celeb_a, faces cropped, labelled by one binary attribute such as
      'Smiling', with celeb_a's own validation and test splits: validation_split and seed do not apply) or
      'folder:PATH' with PATH a directory or a .zip in Keras flow_from_directory layout (one subfolder per class,
      e.g. ImageNet's PATH/<wnid>/*.JPEG).
    image_size: images are resized (bilinear, aspect not kept, as Keras `target_size`) to this square size.
    channels: 3 (RGB) or 1 (grayscale); any source format (grayscale, RGBA, 16-bit) is converted.
    validation_split: fraction in [0, 1) of each class moved to validation, taken from the training split.
    seed: fixes which images are validation images.
    data_dir: tfds data directory.
    limit_per_class: keep only the first N images of each class (quick runs and tests).
    cache_dir: where folder/zip sources cache their decoded arrays (default $CNNJAX_CACHE_DIR or
      ~/.cache/cnnjax; '' disables caching).
    in_memory_limit_gb: datasets whose decoded uint8 arrays (all splits) would take more than this many GB
      (10^9 bytes) are streamed (`streaming.StreamingSet` splits; tfds datasets then need array_record files);
      0 streams every dataset.
  """
  if not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
  if not 0 <= validation_split < 1:
    raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
  if limit_per_class is not None and (not isinstance(limit_per_class, (int, np.integer)) or limit_per_class < 1):
    raise ValueError(f"limit_per_class must be a positive int or None, got {limit_per_class!r}")
  if not isinstance(in_memory_limit_gb, (int, float)) or not 0 <= in_memory_limit_gb < float("inf"):
    raise ValueError(f"in_memory_limit_gb must be a number >= 0 (0: always stream), got {in_memory_limit_gb!r}")
  options = dict(image_size=int(image_size), channels=channels, limit_per_class=limit_per_class)
  fits = lambda images: 0 < images * image_size ** 2 * channels <= in_memory_limit_gb * 1e9
  if isinstance(dataset, str) and dataset.startswith(sources.CELEB_A_PREFIX):
    attribute = dataset[len(sources.CELEB_A_PREFIX):]
    if not fits(sum(_tfds_size("celeb_a", split, data_dir, limit_per_class) for split in sources.CELEB_A_SPLITS)):
      sources.check_celeb_a_attribute(attribute, data_dir)
      return _streamed_tfds("celeb_a", sources.CELEB_A_SPLITS, data_dir, options, attribute)
    parts = sources.load_celeb_a(attribute, data_dir=data_dir, **options)
    train, validation, test = (ImageSet(parts[name].images, parts[name].labels) for name in sources.CELEB_A_SPLITS)
    return Splits(train=train, validation=validation, class_names=parts["train"].class_names, skipped=0, test=test)
  if dataset in sources.TFDS_WITH_VALIDATION:
    if not fits(sum(_tfds_size(dataset, split, data_dir, limit_per_class) for split in ("train", "validation"))):
      return _streamed_tfds(dataset, ("train", "validation"), data_dir, options)
    train, validation = (sources.load_tfds(dataset, data_dir=data_dir, split=split, **options)
                         for split in ("train", "validation"))
    return Splits(train=ImageSet(train.images, train.labels),
                  validation=ImageSet(validation.images, validation.labels), class_names=train.class_names,
                  skipped=train.skipped + validation.skipped)
  if dataset in sources.TFDS_DATASETS:
    if not fits(_tfds_size(dataset, "train", data_dir, limit_per_class)):
      source = streaming.TfdsSource(dataset, "train", data_dir, options["image_size"], channels)
      return _streamed_split(source, source.labels(), sources.tfds_class_names(dataset, data_dir), options,
                             validation_split, seed)
    decoded = sources.load_tfds(dataset, data_dir=data_dir, **options)
  elif isinstance(dataset, str) and dataset.startswith(sources.FOLDER_PREFIX):
    path = os.path.expanduser(dataset[len(sources.FOLDER_PREFIX):])
    if not path:
      raise ValueError("dataset 'folder:' needs a path, e.g. 'folder:/data/cats_vs_dogs/train.zip'")
    files, labels, class_names = sources.list_folder(path, limit_per_class)
    if not fits(len(files)):
      source = streaming.FileSource(path, files, labels, options["image_size"], channels)
      return _streamed_split(source, labels, class_names, dict(options, limit_per_class=None), validation_split,
                             seed)
    decoded = sources.load_folder(path, cache_dir=cache_dir, **options)
  else:
    raise ValueError(f"unknown dataset {dataset!r}; use {sources.describe_valid_datasets()}")
  train, validation = stratified_split(decoded.labels, validation_split, seed)
  subset = lambda index: ImageSet(decoded.images[index], decoded.labels[index])
  return Splits(train=subset(train), validation=subset(validation) if validation_split else None,
                class_names=decoded.class_names, skipped=decoded.skipped)


def _tfds_size(name: str, split: str, data_dir: Optional[str], limit_per_class: Optional[int]) -> int:
  """How many images of a tfds split `load` would keep (an upper bound under limit_per_class)."""
  count = sources.tfds_num_examples(name, split, data_dir)
  if limit_per_class is not None:
    num_classes = 2 if name == "celeb_a" else len(sources.tfds_class_names(name, data_dir))
    count = min(count, limit_per_class * num_classes)
  return count


def _streamed_set(source, labels: np.ndarray, options) -> streaming.StreamingSet:
  index = order.first_per_class(labels, options["limit_per_class"])
  return streaming.StreamingSet(source, index, (options["image_size"], options["image_size"], options["channels"]))


def _streamed_split(source, labels: np.ndarray, class_names: List[str], options, validation_split: float,
                    seed: int) -> Splits:
  """Streamed train and validation sets of one source, split as `load` splits decoded images."""
  every = _streamed_set(source, labels, options)
  train, validation = stratified_split(labels[every.index], validation_split, seed)
  subset = lambda positions: dataclasses.replace(every, index=every.index[positions], skipped=every.skipped)
  return Splits(train=subset(train), validation=subset(validation) if validation_split else None,
                class_names=class_names, skipped=0)


def _streamed_tfds(name: str, splits, data_dir: Optional[str], options, attribute: Optional[str] = None) -> Splits:
  """Streamed sets of a tfds dataset's own splits (train, validation[, test]); limit_per_class reads the labels
  of every record first."""
  sets = []
  for split in splits:
    source = streaming.TfdsSource(name, split, data_dir, options["image_size"], options["channels"], attribute)
    labels = source.labels() if options["limit_per_class"] else np.zeros(len(source), np.int32)
    sets.append(_streamed_set(source, labels, options))
  class_names = (sources.celeb_a_class_names(attribute) if attribute else sources.tfds_class_names(name, data_dir))
  return Splits(train=sets[0], validation=sets[1], class_names=class_names, skipped=0,
                test=sets[2] if len(sets) > 2 else None)


def stratified_split(labels: np.ndarray, validation_split: float, seed: int):
  """(train indices, validation indices), each sorted: round(split * n_c) random images of each class c."""
  rng = np.random.default_rng(seed)
  train, validation = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    # Keep at least one training image per class: a class missing from training cannot be learned.
    count = min(int(round(validation_split * len(members))), len(members) - 1)
    validation.append(members[:count])
    train.append(members[count:])
  validation = np.sort(np.concatenate(validation))
  if validation_split and len(validation) == 0:
    raise ValueError(f"validation_split={validation_split} of {len(labels)} images leaves no validation image; "
                     "use a larger split, more images, or validation_split=0")
  return np.sort(np.concatenate(train)), validation


def batches(images: Images, *, batch_size: int, seed: int, epoch: int, shuffle: bool, start_batch: int = 0,
            process_index: int = 0, process_count: int = 1, position: Optional[int] = None) -> Iterator[dict]:
  """This process's share of each global batch of one epoch, from batch `start_batch` on.

  Training (shuffle=True): a (seed, epoch) permutation, the last incomplete batch dropped; yields
  {'images': uint8 (b, H, W, C), 'labels': int32 (b,)} with b = batch_size // process_count.
  Evaluation (shuffle=False): every image once, in order; the last global batch is padded with zero images
  and every batch has 'mask' float32 (b,): 1 for real images, 0 for padding (and for streamed images that fail
  to decode).
  A streamed training set returns a streaming.TrainReader, whose `position` a checkpoint saves; `position`
  resumes one (None: where the stream is at `start_batch` when nothing before was skipped). In-memory sets
  take no position.
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}; use a "
                     "multiple of the number of processes")
  n = len(images)
  if shuffle and n < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training images, so an epoch has no batch; "
                     "use a smaller batch_size")
  total = num_batches(n, batch_size, drop_remainder=shuffle)
  if not 0 <= start_batch <= total:
    raise ValueError(f"start_batch must be in [0, {total}] (batches per epoch), got {start_batch}")
  common = dict(batch_size=batch_size, start_batch=start_batch, num_batches=total, process_index=process_index,
                process_count=process_count)
  if isinstance(images, streaming.StreamingSet):
    if shuffle:
      return streaming.train_batches(images, seed=seed, epoch=epoch, position=position, **common)
    return streaming.eval_batches(images, **common)
  if position is not None:
    raise ValueError(f"position={position} applies to streamed training sets only; in-memory batches are placed "
                     "by start_batch")
  order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
  # A generator inside, so bad arguments raise here, at the call, rather than at the first next().
  return _iterate(images, order, batch_size, batch_size // process_count, process_index, range(start_batch, total),
                  pad=not shuffle)


def _iterate(images: ImageSet, order, batch_size, share, process_index, steps, pad: bool) -> Iterator[dict]:
  for step in steps:
    first = step * batch_size + process_index * share
    index = order[first:first + share]
    if not pad:
      yield {"images": images.images[index], "labels": images.labels[index]}
      continue
    real, padding = len(index), share - len(index)
    yield {
        "images": np.concatenate([images.images[index],
                                  np.zeros((padding, *images.images.shape[1:]), images.images.dtype)]),
        "labels": np.concatenate([images.labels[index], np.zeros(padding, images.labels.dtype)]),
        "mask": np.concatenate([np.ones(real, np.float32), np.zeros(padding, np.float32)]),
    }
