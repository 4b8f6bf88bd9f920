"""VGG16 (configuration D) trained from scratch on CIFAR-10 at 32x32, with BatchNorm after each conv, as the
CIFAR-10 VGG tutorials do (plain VGG16 does not train from scratch at this size without it); SGD with momentum,
warmup + cosine.

  python train.py --config configs/vgg16.py --workdir runs/vgg16
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "vgg16"
  config.model_options.batch_norm = True
  config.model_options.head = "gap"
  config.batch_size = 64
  config.num_epochs = 30
  config.optimizer = "sgd"
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 1.0
  return config
