"""The Keras CIFAR-10 tutorial CNN: simple_cnn, Adam, batch 32, 10 epochs, ImageDataGenerator augmentation.

  python train.py --config configs/simple_cnn.py --workdir runs/simple_cnn
  # offline, on the shipped JPEGs:
  python train.py --config configs/simple_cnn.py --workdir runs/simple_cnn \
      --config.dataset=folder:../shared/data/cifar10_jpeg/train.zip
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "simple_cnn"
  config.dataset = "cifar10"
  config.image_size = 32
  config.batch_size = 32
  config.num_epochs = 10
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.augment.update(horizontal_flip=True, rotation=15.0, width_shift=0.1, height_shift=0.1)
  return config
