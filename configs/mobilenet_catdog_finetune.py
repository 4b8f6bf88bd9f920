"""Cats vs dogs by fine-tuning ImageNet MobileNet 0.25 in two phases (the Keras fine-tuning recipe):
phase 1 freezes the backbone and trains the new `conv_preds` head with RMSprop; phase 2 starts from phase 1's
best weights, keeps the first 15 layers (stem and first blocks) frozen and fine-tunes the rest with SGD 1e-3,
momentum 0.9. Runs in <workdir>/phase1 and <workdir>/phase2; `restore(workdir)` gives phase 2's weights.

  python train.py --config configs/mobilenet_catdog_finetune.py --workdir runs/mobilenet_catdog_finetune \
      --config.dataset=folder:../shared/data/cats_vs_dogs/train.zip
"""
from configs import mobilenet_catdog


def get_config():
  config = mobilenet_catdog.get_config()
  config.bottleneck.layer = ""
  config.augment.update(horizontal_flip=True, width_shift=0.1, height_shift=0.1, zoom=0.1)
  config.model_options.dropout = 0.2
  config.phases = (
      dict(freeze="(?!conv_preds).*", optimizer="rmsprop", learning_rate=1e-3, num_epochs=3),
      dict(freeze_first=15, optimizer="sgd", learning_rate=1e-3, momentum=0.9, num_epochs=5),
  )
  return config
