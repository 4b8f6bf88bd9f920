"""Bakshi's cats-vs-dogs VGG16 at 224x224 (the partner of configs/alexnet.py), same data and optimiser.

  python train.py --config configs/vgg16_catdog.py --workdir runs/vgg16_catdog
"""
from configs import alexnet


def get_config():
  config = alexnet.get_config()
  config.model = "vgg16"
  config.learning_rate = 0.001
  config.batch_size = 16
  # Evaluating 256 images at once at 224px holds a 3 GB activation per VGG16 block-1 layer: XLA:CPU aborted
  # with std::bad_alloc on the 24 GB machine. 32 keeps evaluation within a few GB.
  config.eval_batch_size = 32
  return config
