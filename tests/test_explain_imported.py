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
