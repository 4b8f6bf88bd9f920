"""Input pipeline: host-side decode to uint8 arrays and batches; augmentation and normalisation on the device.

  splits = load('folder:/data/cats_vs_dogs/train.zip', image_size=150)
  for batch in batches(splits.train, batch_size=32, seed=0, epoch=0, shuffle=True): ...
  # inside the jitted step:
  images = augment(batch['images'].astype(jnp.float32), key, **dict(config.augment))
  images = preprocess(images, 'rescale')
"""
from cnnjax.data.augment import augment
from cnnjax.data.pipeline import ImageSet, Splits, batches, load, num_batches
from cnnjax.data.preprocess import MODES, channel_mean_std, preprocess

__all__ = ["ImageSet", "MODES", "Splits", "augment", "batches", "channel_mean_std", "load", "num_batches",
           "preprocess"]
