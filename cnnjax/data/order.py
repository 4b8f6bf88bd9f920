"""Which images a batch holds: pure functions of (seed, epoch, batch, process), shared by the in-memory batches
(pipeline.py) and the streamed ones (streaming.py), so both feed a step the same images."""
from typing import Optional

import numpy as np


def num_batches(n_images: int, batch_size: int, drop_remainder: bool) -> int:
  """Batches in one pass: floor(n / b) when the last incomplete batch is dropped, else ceil(n / b)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  return n_images // batch_size if drop_remainder else -(-n_images // batch_size)


def epoch_permutation(n_images: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of `epoch`: a function of (seed, epoch) only, so any host can recompute it."""
  return np.random.default_rng([seed, epoch]).permutation(n_images)


def process_positions(n_images: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
  """The positions in an epoch's order that process `process_index` reads, in order: its contiguous share of
  every global batch (positions b * batch_size + process_index * share + [0, share)), the last incomplete batch
  included (a streamed epoch takes its replacements for undecodable files from there)."""
  share = batch_size // process_count
  positions = np.arange(n_images)
  return positions[(positions % batch_size) // share == process_index]


def first_per_class(labels: np.ndarray, limit_per_class: Optional[int]) -> np.ndarray:
  """Indices of the first `limit_per_class` images of each class, in their order (all of them for None)."""
  if limit_per_class is None:
    return np.arange(len(labels))
  return np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit_per_class] for c in np.unique(labels)]))
