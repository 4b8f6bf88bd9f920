"""Bakshi's cats-vs-dogs VGG16 at 224x224 (the partner of configs/alexnet.py), same data and optimiser.

  python train.py --config configs/vgg16_catdog.py --workdir runs/vgg16_catdog
"""
from configs import alexnet


def get_config():
  config = alexnet.get_config()
  config.model = "vgg16"
  config.learning_rate = 0.001
  config.batch_size = 16
  return config
