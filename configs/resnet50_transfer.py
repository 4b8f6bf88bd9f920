"""ResNet50 with ImageNet weights (`keras:resnet50`, the Keras notop file) and the transfer tutorial's new head,
Flatten - Dropout0.2 - Dense10, on CIFAR-10 images upsampled to 64x64 (ResNet50's /32 reduction leaves a 2x2
map). The backbone is frozen for phase 1 (RMSprop on the head), then stages 4-5 fine-tune with SGD 1e-3,
momentum 0.9.

  python train.py --config configs/resnet50_transfer.py --workdir runs/resnet50_transfer
"""
from configs import resnet50


def get_config():
  config = resnet50.get_config()
  config.pretrained = "keras:resnet50"
  config.model_options.update(head="flatten", dropout=0.2)
  config.image_size = 64
  config.schedule = "constant"
  config.batch_size = 32
  config.phases = (
      dict(freeze="(?!predictions).*", optimizer="rmsprop", learning_rate=1e-4, num_epochs=2),
      dict(freeze="conv[1-3]_.*|pool1_pool", optimizer="sgd", learning_rate=1e-3, momentum=0.9, num_epochs=5),
  )
  return config
