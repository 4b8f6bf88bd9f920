"""The KDnuggets tutorial's convolution figure: Sobel dx / dy / magnitude of a photo, next to the first-layer
filters and activations of a trained model.

  python examples/convolution_demo.py --photo ../shared/data/photos/cat_dog.jpg \
      [--workdir runs/simple_cnn] --out convolution_demo.png
"""
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

flags.DEFINE_string("photo", None, "Photo to convolve (any format Pillow reads).")
flags.DEFINE_string("workdir", None, "A train.py run whose first layer to show beside the Sobel responses.")
flags.DEFINE_string("out", "convolution_demo.png", "Where to save the figure.")
flags.mark_flags_as_required(["photo"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from cnnjax import viz
  from cnnjax.train import experiment, restore
  options = {}
  try:
    if flags.FLAGS.workdir:
      model, variables, config = restore(flags.FLAGS.workdir)
      options = dict(model=model, variables=variables, image_size=config.image_size,
                     preprocess=experiment.preprocess_settings(config))
    viz.convolution_demo(flags.FLAGS.photo, path=flags.FLAGS.out, **options)
  except ValueError as error:
    sys.exit(f"error: {error}")
  print(f"saved {flags.FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
