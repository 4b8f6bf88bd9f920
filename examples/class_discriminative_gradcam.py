"""Grad-CAM is class-discriminative: the ImageNet MobileNet 0.25 looks at the cat for "tiger cat" and at the dog
for "boxer" / "bull mastiff" in the same photo (the Grad-CAM paper's Figure 1, on its cat-and-dog image).

  python examples/class_discriminative_gradcam.py --photo ../shared/data/photos/cat_dog.jpg \
      --out gradcam_cat_vs_dog.png

Prints the top-5 predictions and, for each class, the share of the Grad-CAM map that falls in the upper half of
the photo (where the dog sits in cat_dog.jpg; the cat lies across the lower half) and the map's centre of mass.
"""
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

flags.DEFINE_string("photo", None, "A photo with a cat and a dog.")
flags.DEFINE_string("weights", None, "MobileNet weights (default: ../shared/weights/mobilenet/...h5).")
flags.DEFINE_list("classes", ["tiger cat", "boxer", "bull mastiff"], "ImageNet class names to explain.")
flags.DEFINE_string("out", "gradcam_cat_vs_dog.png", "Where to save the figure.")
flags.mark_flags_as_required(["photo"])


def class_maps(photo_path, weights_path, class_names):
  """(image uint8 224x224, top-5, {class: Grad-CAM map}) with one batched Grad-CAM call for all classes."""
  import jax.numpy as jnp
  import numpy as np
  from cnnjax import explain, pretrained
  from cnnjax.apps import report
  model, variables = pretrained.load(weights_path)
  image = report.load_images([str(photo_path)], 224, 3)
  inputs = pretrained.preprocess(jnp.asarray(image, jnp.float32), pretrained.preprocessing_for(str(weights_path)))
  top5 = pretrained.decode_predictions(model.apply(variables, inputs), top=5)[0]
  all_names = pretrained.imagenet_class_names()
  targets = np.concatenate([report.resolve_target(name, np.zeros((1, len(all_names))), all_names)
                            for name in class_names])
  maps = explain.gradcam(model, variables, jnp.repeat(inputs, len(class_names), axis=0), jnp.asarray(targets))
  return image[0], top5, dict(zip(class_names, np.asarray(maps)))


def upper_half_share(heatmap) -> float:
  return float(heatmap[:heatmap.shape[0] // 2].sum() / max(heatmap.sum(), 1e-12))


def centre_of_mass(heatmap):
  import numpy as np
  rows, cols = np.indices(heatmap.shape)
  total = max(float(heatmap.sum()), 1e-12)
  return float((rows * heatmap).sum() / total), float((cols * heatmap).sum() / total)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from cnnjax import pretrained, viz
  weights = flags.FLAGS.weights or pretrained.preprocessing.shared_dir() / "weights/mobilenet/mobilenet_2_5_224_tf.h5"
  try:
    image, top5, maps = class_maps(flags.FLAGS.photo, weights, flags.FLAGS.classes)
  except ValueError as error:
    sys.exit(f"error: {error}")
  print("top-5: " + ", ".join(f"{name} {probability:.3f}" for _, name, probability in top5))
  for name, heatmap in maps.items():
    row, col = centre_of_mass(heatmap)
    print(f"{name}: {upper_half_share(heatmap):.2f} of the map in the upper half, centre of mass at "
          f"row {row:.0f}, column {col:.0f} (of {heatmap.shape[0]})")
  viz.explanation_figure(image, {f"gradcam '{name}'": heatmap for name, heatmap in maps.items()},
                         "MobileNet 0.25: where each class is seen", path=flags.FLAGS.out)
  print(f"wrote {flags.FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
