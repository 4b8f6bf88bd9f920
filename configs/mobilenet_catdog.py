"""Cats vs dogs on ImageNet MobileNet 0.25 features (works offline with the shipped Keras weights): the
backbone runs once to `conv_pw_13_relu`, the features are cached in the workdir, and a
Dense512-Dropout0.5-Dense256-Dropout0.2-Dense2 head trains on them (the Keras blog's bottleneck recipe).

  python train.py --config configs/mobilenet_catdog.py --workdir runs/mobilenet_catdog \
      --config.dataset=folder:../shared/data/cats_vs_dogs/train.zip
Fine-tuning the whole network instead: configs/mobilenet_catdog_finetune.py.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "mobilenet"
  config.model_options.alpha = 0.25
  config.pretrained = "../shared/weights/mobilenet/mobilenet_2_5_224_tf.h5"  # relative to the checkout
  config.dataset = "cats_vs_dogs"
  config.num_classes = 2
  config.image_size = 160
  config.validation_split = 0.2
  config.augment.update(horizontal_flip=False, width_shift=0.0, height_shift=0.0)  # features are computed once
  config.bottleneck.update(layer="conv_pw_13_relu", hidden=(512, 256), dropout=(0.5, 0.2))
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 20
  config.optimizer = "rmsprop"
  config.learning_rate = 1e-4
  config.early_stopping.update(monitor="val_loss", patience=0)
  return config
