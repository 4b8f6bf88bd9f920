"""Input pipeline: host-side decode to uint8 arrays and batches; augmentation and normalisation on the device.

  splits = load('folder:/data/cats_vs_dogs/train.zip', image_size=150)
  for batch in batches(splits.train, batch_size=32, seed=0, epoch=0, shuffle=True): ...
  # inside the jitted step:
  images = augment(batch['images'].astype(jnp.float32), key, **dict(config.augment))
  images = preprocess(images, 'rescale')

Datasets larger than `in_memory_limit_gb` load as StreamingSets (cnnjax.data.streaming), which `batches` and
`head` take as they take ImageSets.
"""
from cnnjax.data.augment import augment
from cnnjax.data.pipeline import ImageSet, Splits, batches, head, load, num_batches
from cnnjax.data.preprocess import MODES, channel_mean_std, preprocess
from cnnjax.data.streaming import StreamingSet

__all__ = ["ImageSet", "MODES", "Splits", "StreamingSet", "augment", "batches", "channel_mean_std", "head", "load",
           "num_batches", "preprocess"]
