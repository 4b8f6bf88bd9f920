"""The KDnuggets cats-vs-dogs CNN at 150x150 (3x3 'same' Conv32-Pool-Conv32-Pool-Conv64-Pool-Dropout 0.25-Dense64-
Dropout 0.5-Dense 2, 1,355,938 parameters; `--config.model=catdog_cnn_chollet` runs the Keras blog's 'valid' one):
SGD lr 0.01, momentum 0.9, Keras decay lr/epochs, 50 epochs, early stopping on val_loss (patience 2),
rescale 1/255, shear/zoom/flip augmentation as the Keras blog's ImageDataGenerator.

  python train.py --config configs/catdog_cnn.py --workdir runs/catdog_cnn
  # offline, on the shipped 2,000 photos:
  python train.py --config configs/catdog_cnn.py --workdir runs/catdog_cnn \
      --config.dataset=folder:../shared/data/cats_vs_dogs/train.zip
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "catdog_cnn"
  config.dataset = "cats_vs_dogs"
  config.num_classes = 2
  config.image_size = 150
  config.validation_split = 0.2
  config.batch_size = 32
  config.num_epochs = 50
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.schedule = "inverse_time"  # decay = learning_rate / num_epochs
  # The blog's shear_range=0.2 was in radians (Keras 1); Keras 2+ and cnnjax take degrees: 0.2 rad = 11.46 deg.
  config.augment.update(horizontal_flip=True, width_shift=0.0, height_shift=0.0, shear=11.46, zoom=0.2)
  config.early_stopping.update(monitor="val_loss", patience=2)
  return config
