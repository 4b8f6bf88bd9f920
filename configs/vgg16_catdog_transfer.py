"""Cats vs dogs with ImageNet VGG16 + GlobalAveragePooling + Dense(2): the Keras applications notop weights
(`keras:vgg16`, downloaded once to ~/.cache/cnnjax/weights; offline, the error says where to put the file),
convolutional blocks frozen for phase 1 (RMSprop on the head), then block5 fine-tuned with SGD 1e-3 momentum 0.9
(Keras's `model.layers[:15]` frozen = cnnjax's first 14 layers, the InputLayer not being one).

  python train.py --config configs/vgg16_catdog_transfer.py --workdir runs/vgg16_catdog_transfer \
      --config.dataset=folder:../shared/data/cats_vs_dogs/train.zip
"""
from configs import vgg16_catdog


def get_config():
  config = vgg16_catdog.get_config()
  config.model_options.head = "gap"
  config.pretrained = "keras:vgg16"
  config.preprocess = "auto"  # caffe, as the Keras weights were trained
  config.schedule = "constant"
  config.early_stopping.update(patience=0)
  config.phases = (
      dict(freeze="block.*", optimizer="rmsprop", learning_rate=1e-4, num_epochs=5),
      dict(freeze_first=14, optimizer="sgd", learning_rate=1e-3, momentum=0.9, num_epochs=10),
  )
  return config
