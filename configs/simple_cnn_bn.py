"""The tutorial's BatchNorm variant of the CIFAR-10 CNN with its step schedule (`lr_schedule(epoch)`: 1e-4,
5e-5 when epoch > 5, 3e-5 when epoch > 10), Adam, batch 64, 15 epochs.

  python train.py --config configs/simple_cnn_bn.py --workdir runs/simple_cnn_bn
"""
from configs import simple_cnn


def get_config():
  config = simple_cnn.get_config()
  config.model = "simple_cnn_bn"
  config.batch_size = 64
  config.num_epochs = 15
  config.learning_rate = 1e-4
  config.schedule = "piecewise"
  config.lr_drops = ((5, 5e-5), (10, 3e-5))
  return config
