"""The explainers on models imported from other frameworks: same names, same functions."""
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import explain, pretrained


@pytest.mark.parametrize("path, layer", [
    ("weights/keras_cifar10/sagecodes_keras_cifar10_trained_model.h5", None),  # SequentialFromKeras
    ("weights/resnet_cifar/resnet20-12fca82f.npz", "conv4_block3_out"),        # PyTorch state dict
])
def test_explainers_run_on_imported_models(shared_dir, path, layer):
  model, variables = pretrained.load(shared_dir / path)
  images = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3)), jnp.float32)
  targets = jnp.array([3, 5])
  cams = explain.gradcam(model, variables, images, targets, layer=layer)
  guided = explain.saliency(model, variables, images, targets, modifier="guided")
  assert cams.shape == (2, 32, 32) and guided.shape == (2, 32, 32, 3)
  assert np.all(np.isfinite(cams)) and 0 <= float(cams.min()) and float(cams.max()) <= 1
  assert float(jnp.abs(guided).sum()) > 0
  # The default layer is a spatial feature map of the imported model, found by name.
  names = explain.layer_names(model, (32, 32, 3))
  assert layer is None or layer in names



def test_gradcam_on_imagenet_mobilenet_separates_the_cat_from_the_dog(shared_dir):
  """The Grad-CAM paper's Figure 1 check on its own photo (examples/class_discriminative_gradcam.py draws it):
  the dog sits in the upper half, the cat lies across the lower half; the 'tiger cat' map must lie mostly in
  the lower half and the 'boxer' map mostly in the upper half."""
  from cnnjax.apps import report
  path = shared_dir / "weights/mobilenet/mobilenet_2_5_224_tf.h5"
  model, variables = pretrained.load(path)
  images = report.load_images([str(shared_dir / "data/photos/cat_dog.jpg")] * 2, 224, 3)
  inputs = pretrained.preprocess(jnp.asarray(images, jnp.float32), pretrained.preprocessing_for(str(path)))
  names = pretrained.imagenet_class_names()
  cat, dog = names.index("tiger cat"), names.index("boxer")
  assert int(jnp.argmax(model.apply(variables, inputs[:1]))) == dog
  maps = np.asarray(explain.gradcam(model, variables, inputs, jnp.array([cat, dog])))
  upper_share = maps[:, :112].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
  assert upper_share[0] < 0.4 and upper_share[1] > 0.6, upper_share
