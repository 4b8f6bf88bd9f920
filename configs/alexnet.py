"""Bakshi's cats-vs-dogs AlexNet at 224x224 (Conv96 11x11/4 ... Dense4096 x3 with dropout 0.25), SGD with
momentum, as in the report; starts from the cats-vs-dogs CNN's data settings.

  python train.py --config configs/alexnet.py --workdir runs/alexnet
"""
from configs import catdog_cnn


def get_config():
  config = catdog_cnn.get_config()
  config.model = "alexnet"
  config.image_size = 224
  config.num_epochs = 30
  config.learning_rate = 0.005
  return config
