"""Pretrained weights from Keras and PyTorch as cnnjax models with Keras layer names.

  model, variables = cnnjax.pretrained.load('mobilenet_2_5_224_tf.h5')
  images = cnnjax.pretrained.preprocess(uint8_images, cnnjax.pretrained.preprocessing_for(path))
  cnnjax.pretrained.decode_predictions(model.apply(variables, images))

`load(path, arch=None, **options) -> (model, variables)` reads, by file:
- keras.applications weight files (HDF5 with `layer_names`): mobilenet (alpha from the file), vgg16/19,
  resnet50/101/152; `_notop` files need `num_classes=` and get a freshly initialised head (`seed=`).
- Keras full models saved with `model.save('x.h5')`: rebuilt as a `SequentialFromKeras` returning logits.
- PyTorch state dicts (`.npz` twins; `.pth/.pt/.th` when torch is installed): CIFAR ResNet-20/32/44/56 and
  torchvision VGG / ResNet (ResNet50 built with `stride_on_3x3=True`, torchvision's v1.5).
`arch` is inferred from the layer names when None; `options` go to `cnnjax.models.create`. Every model returns
logits. A file that does not fit raises a one-line ValueError naming the first layer that differs.
Nothing is unpickled: PyTorch files are read with `torch.load(weights_only=True)` and .npz files with
`allow_pickle=False`, so a file holding pickled Python objects (which run code when loaded) is refused;
`load(path, allow_pickle=True)` opts in for files from a source you trust.
"""
from cnnjax.pretrained.keras_h5 import SequentialFromKeras
from cnnjax.pretrained.preprocessing import decode_predictions, imagenet_class_names, preprocess, preprocessing_for
from cnnjax.pretrained.registry import load, source_of

__all__ = ["SequentialFromKeras", "decode_predictions", "imagenet_class_names", "load", "preprocess",
           "preprocessing_for", "source_of"]
