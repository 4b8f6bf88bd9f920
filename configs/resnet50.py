"""ResNet50 (Keras applications layout) trained from scratch on CIFAR-10 at 32x32, Adam, batch 64.
Transfer learning from ImageNet weights is `--config.pretrained` (see the README).

  python train.py --config configs/resnet50.py --workdir runs/resnet50
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet50"
  config.batch_size = 64
  config.num_epochs = 30
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 1.0
  return config
