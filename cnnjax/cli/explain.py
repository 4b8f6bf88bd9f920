"""Explain a trained or imported model's predictions on image files, or on a local web page: cnnjax-explain
(from a checkout: python explain.py, the same program; the examples below write it so).

  python explain.py --workdir runs/simple_cnn --images a.jpg b.png photos/ \\
      --methods saliency,guided,relu,gradcam,guided_gradcam --target top1 --out runs/simple_cnn/explain
  python explain.py --workdir RUN --images a.jpg --methods activations --layer conv2d_1
  python explain.py --workdir RUN --images a.jpg --methods maximize --target cat
  python explain.py --workdir RUN --images a.jpg --methods saliency,gradcam,deletion   # + deletion.json AUCs
  python explain.py --weights ../shared/weights/mobilenet/mobilenet_2_5_224_tf.h5 --images a.jpg --target "tiger cat"
  python explain.py --serve --workdir RUN            # prints http://127.0.0.1:PORT/; --images to offer photos
  python explain.py --list_methods                   # every explainer --methods accepts (or --methods all)
  python explain.py --workdir RUN --dataset folder:data/train.zip --methods saliency,gradcam --out DIR
      # every image: DIR/METHOD.zarr, images.txt, metrics.jsonl, summary.json, summary.png; rerun resumes

Loads the best checkpoint and the config of a train.py workdir (or a weight file through cnnjax.pretrained.load,
with ImageNet class names for 1000-class models), preprocesses the images as that model was trained, prints the
top-5 predictions and writes one figure per image (input | saliency | guided | rectified | Grad-CAM | guided
Grad-CAM), named after the image (its folder or extension added where two images share a name). All images go
through each explainer in one jitted batched call. --serve instead starts a page where one picks a photo
(--images, else shared/data/photos) or uploads one, then a class and a Grad-CAM layer.
"""
import glob
import os
import sys

from absl import app, flags, logging

from cnnjax import cli

flags.DEFINE_string("workdir", None, "A train.py workdir (its best checkpoint and config are used).")
flags.DEFINE_string("weights", None, "Instead of --workdir: a weight file cnnjax.pretrained.load reads (Keras .h5, "
                    "PyTorch .npz/.pth).")
flags.DEFINE_integer("image_size", None, "Input side for --weights (default: 32 for CIFAR ResNets and full Keras "
                     "models, else 224).")
flags.DEFINE_list("images", [], "Images to explain (with --serve: the photos offered on the page): files, folders "
                  "(every image file directly inside, sorted) or quoted globs ('photos/*.jpg'), separated by "
                  "spaces or commas.")
flags.DEFINE_string("methods", "saliency,guided,relu,gradcam,guided_gradcam",
                    "Comma-separated explainers of cnnjax.explain.registry (--list_methods shows them) or all; and "
                    "activations, maximize, deletion.")
flags.DEFINE_bool("list_methods", False, "Print every explainer (name, paper, peer) and exit.")
flags.DEFINE_string("layer", None, "Layer for Grad-CAM / activations (Keras-style name); default: the last "
                    "spatial feature map. With maximize: also a grid of its first channels' visualizations.")
flags.DEFINE_string("target", "top1", "top1 (each image's prediction), a class index or a class name.")
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain; ./explain with --weights).")
flags.DEFINE_bool("serve", False, "Serve the explanation web page instead of writing figures.")
flags.DEFINE_string("host", "127.0.0.1", "Address the page is served on (--serve).")
flags.DEFINE_integer("port", 8000, "Port of the page (--serve); 0 picks a free one.")
flags.DEFINE_string("dataset", None, "Instead of --images: explain every image of a dataset, in config.dataset's "
                    "syntax ('folder:PATH' for a directory or .zip of class subfolders, or a tfds name), into --out's "
                    "METHOD.zarr, images.txt, metrics.jsonl, summary.json and summary.png (resumed if rerun).")
flags.DEFINE_integer("batch_size", 64, "--dataset: images per chunk, one global batch over every device (a "
                     "multiple of the device count).")
flags.DEFINE_list("metrics", ["deletion_insertion"], "--dataset: per-image metrics (deletion_insertion, "
                  "mufidelity, infidelity); the first ranks the summary's best and worst images.")
flags.DEFINE_integer("limit_per_class", None, "--dataset: only the first N images of each class.")
flags.DEFINE_string("data_dir", None, "--dataset: the tfds data directory.")
flags.DEFINE_string("split", "train", "--dataset: the tfds split.")
cli.define_distributed_flags("--dataset: ", __name__)


def image_items(argv):
  """--images' values plus the words absl leaves over: `--images a.jpg b.jpg` (or a glob the shell expanded into
  many words) gives the flag only a.jpg and leaves the other images as arguments."""
  leftover = argv[1:]
  if leftover and not flags.FLAGS["images"].present:
    raise ValueError(f"unexpected argument(s) {' '.join(leftover)}; pass images with --images")
  for word in leftover:
    # A word that names no file and does not look like a path is a mistake, not a missing image: a mistyped
    # flag (a typographic dash pasted for --) or the second word of an unquoted value (--target tiger cat).
    looks_like_path = os.sep in word or os.path.splitext(word)[1] or glob.has_magic(word)
    if not looks_like_path and not os.path.exists(word):
      raise ValueError(f"unexpected argument {word!r}: not an image file, folder or glob (a mistyped flag, or "
                       f"a value with spaces left unquoted?)")
  return flags.FLAGS.images + leftover


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  cli.initialize_distributed()
  from cnnjax.apps import report, serve
  if FLAGS.list_methods:
    print(report.methods_table())
    return
  try:
    images = report.image_paths(image_items(argv))
    methods = report.parse_methods(FLAGS.methods)
    if FLAGS.dataset is not None and (images or FLAGS.serve):
      raise ValueError("--dataset explains a whole dataset; drop --images / --serve (or --dataset)")
    source = report.load_source(FLAGS.workdir, FLAGS.weights, FLAGS.image_size)
    if FLAGS.dataset is not None:
      _explain_dataset(FLAGS, methods, source)
    elif FLAGS.serve:
      serve.serve(source, images or serve.default_photos(), FLAGS.host, FLAGS.port,
                  title=FLAGS.workdir or FLAGS.weights)
    else:
      report.run(source, images, methods=methods, target=FLAGS.target, layer=FLAGS.layer,
                 out_dir=FLAGS.out or os.path.join(FLAGS.workdir or ".", "explain"))
  except ValueError as error:
    if os.environ.get("CNNJAX_DEBUG"):
      raise
    sys.exit(f"error: {error}")


def _explain_dataset(FLAGS, methods, source) -> None:
  from cnnjax.apps import dataset  # pylint: disable=import-outside-toplevel
  out_dir = FLAGS.out or os.path.join(FLAGS.workdir or ".", "explain_dataset")
  dataset.explain_dataset(source, FLAGS.dataset, methods=methods, out_dir=out_dir, batch_size=FLAGS.batch_size,
                          metrics=FLAGS.metrics, target=FLAGS.target, layer=FLAGS.layer, data_dir=FLAGS.data_dir,
                          limit_per_class=FLAGS.limit_per_class, split=FLAGS.split)


def run() -> None:
  """The program (console script `cnnjax-explain`; explain.py calls it too)."""
  cli.use_huge_pages()
  cli.main_module_flags(__name__, __doc__)
  app.run(main)
