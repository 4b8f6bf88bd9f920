"""LeNet-5 (32x32 grayscale, 6@5x5-pool-16@5x5-pool-120-84-10) on CIFAR-10 converted to one channel.

  python train.py --config configs/lenet5.py --workdir runs/lenet5
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "lenet5"
  config.channels = 1
  config.batch_size = 64
  config.num_epochs = 20
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  return config
