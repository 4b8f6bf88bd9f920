"""Defaults shared by every experiment (the fields are documented in cnnjax/train/config.py).

On its own it trains `simple_cnn` on tfds CIFAR-10 with the defaults:
  python train.py --config configs/default.py --workdir runs/default
"""
from cnnjax.train import config as config_lib


def get_config():
  return config_lib.default_config()
