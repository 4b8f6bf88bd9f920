"""Explain a trained model's predictions on image files.

  python explain.py --workdir runs/simple_cnn --images a.jpg b.png \
      --methods saliency,guided,relu,gradcam,guided_gradcam --target top1 --out runs/simple_cnn/explain
  python explain.py --workdir RUN --images a.jpg --methods activations --layer conv2d_1
  python explain.py --workdir RUN --images a.jpg --methods maximize --target cat
  python explain.py --workdir RUN --images a.jpg --methods saliency,gradcam,deletion   # + deletion.json AUCs

Loads the best checkpoint and the config of a train.py workdir, preprocesses the images as that model was
trained, prints the top-5 predictions and writes one figure per image (input | saliency | guided | rectified |
Grad-CAM | guided Grad-CAM). All images go through each explainer in one jitted batched call.
"""
import os
import sys

from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "A train.py workdir (its best checkpoint and config are used).")
flags.DEFINE_list("images", [], "Image files to explain.")
flags.DEFINE_string("methods", "saliency,guided,relu,gradcam,guided_gradcam",
                    "Comma-separated: saliency, guided, relu, smoothgrad, integrated_gradients, gradcam, gradcam++, "
                    "guided_gradcam, activations, maximize, deletion.")
flags.DEFINE_string("layer", None, "Layer for Grad-CAM / activations (Keras-style name); default: the last "
                    "spatial feature map.")
flags.DEFINE_string("target", "top1", "top1 (each image's prediction), a class index or a class name.")
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from cnnjax.explain import report
  from cnnjax.train import loop
  FLAGS = flags.FLAGS
  try:
    methods = report.parse_methods(FLAGS.methods)
    model, variables, config = loop.restore(FLAGS.workdir)
    report.run(model, variables, config.class_names, loop.preprocess_settings(config), FLAGS.images,
               config.image_size, config.channels, methods, FLAGS.target, FLAGS.layer,
               FLAGS.out or os.path.join(FLAGS.workdir, "explain"))
  except ValueError as error:
    if os.environ.get("CNNJAX_DEBUG"):
      raise
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
