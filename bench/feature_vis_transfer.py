"""Do class visualizations transfer? (issue #17) Ten class images are made on the shipped resnet20 (akamaster
weights) with each parameterization, saved as 8-bit pixels, and classified by resnet20 itself and by the three Keras
CIFAR-10 CNNs of other architectures in shared/weights/keras_cifar10: the share of images recognised as their class.

  nice python bench/feature_vis_transfer.py                 # the table of bench/RESULTS.md (a few minutes)
  nice python bench/feature_vis_transfer.py --only default --steps 512   # one recipe, other settings
  nice python bench/feature_vis_transfer.py --timing        # time per image and batch scaling of the default
  nice python bench/feature_vis_transfer.py --gallery       # the README's docs/feature_vis_*.png
  python bench/feature_vis_transfer.py --gallery channels  # only some of them

Writes bench/results/<date>-feature-vis-transfer.{json,md}.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from cnnjax import data, explain, pretrained, viz  # noqa: E402
from cnnjax.data.preprocess import TORCH_MEAN, TORCH_STD  # noqa: E402
from cnnjax.explain import maximize  # noqa: E402
from cnnjax.explain import transforms as T  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
RESNET20 = WEIGHTS / "resnet_cifar" / "resnet20-12fca82f.npz"
KERAS = ("andrewtzeva_cifar10_model.h5", "sagecodes_keras_cifar10_trained_model.h5",
         "sagecodes_keras_cifar10_trained_model_aug.h5")
CLASSES = 10
# name -> maximize_activation options. "keras-vis" is the pre-#17 default; the others are the parameterizations
# with lucid's robustness transforms; "default" is maximize_activation's default.
RECIPES = {
    "keras-vis pixels (pre-#17 default)": dict(maximize.KERAS_VIS, steps=200),
    "keras-vis pixels, 400 steps, jitter 2": dict(maximize.KERAS_VIS, steps=400, jitter=2),
    "pixels + sigmoid + transforms": dict(param="pixels", colour=None),
    "pixels + decorrelated colour + sigmoid + transforms": dict(param="pixels"),
    "fft + sigmoid + transforms": dict(colour=None),
    "fft + decorrelated colour + tanh + transforms": dict(squash="tanh"),
    "fft + decorrelated colour + sigmoid, no transforms": dict(transforms=()),
    "fft + decorrelated colour + sigmoid, lucid's transforms and decay_power 1": dict(transforms="lucid",
                                                                                     decay_power=1.0),
    "default (fft + decorrelated colour + sigmoid + transforms)": dict(),
}

# Variations tried while choosing the default (--tune; rounds 1-3 in bench/results/*-tuning-round{1,2,3}.*). The
# default went from lucid's (decay_power 1, lucid_transforms) to decay_power 1.5 (round 1) and standard_transforms =
# the "stronger" set of round 3 (pad 6, jitter 6, scale 0.7-1.3, rotate 30, jitter 3 at 32 pixels).
STRONG = (T.Pad(4), T.Jitter(4), T.RandomScale(tuple(0.8 + 0.04 * i for i in range(11))),
          T.RandomRotate(tuple(float(d) for d in range(-20, 21, 2))), T.Jitter(2))
TUNING = {
    "default (decay_power 1.5, standard_transforms)": dict(),
    "lucid's transforms, decay_power 1": dict(transforms="lucid", decay_power=1.0),
    "strong transforms (pad 4, jitter 4, scale 0.8-1.2, rotate 20, jitter 2)": dict(transforms=STRONG),
    "default, 512 steps": dict(steps=512),
}


def pixels_of(inputs) -> np.ndarray:
  """resnet20 inputs (torch-normalised) -> the uint8 images they are (as a saved PNG would hold them)."""
  mean, std = np.asarray(TORCH_MEAN), np.asarray(TORCH_STD)
  return np.uint8(np.clip(np.round((np.asarray(inputs) * std + mean) * 255), 0, 255))


def judges():
  """name -> (model, variables, preprocess mode): resnet20 and the three Keras CNNs."""
  loaded = {"resnet20": (*pretrained.load(str(RESNET20)), "torch")}
  for name in KERAS:
    loaded[name.replace("_trained_model", "").replace(".h5", "")] = (*pretrained.load(str(WEIGHTS / "keras_cifar10" /
                                                                                          name)), "rescale")
  return loaded


def recognised(judge, images: np.ndarray) -> np.ndarray:
  """(10,) bool: whether the judge classifies image c as class c."""
  model, variables, mode = judge
  logits = model.apply(variables, data.preprocess(jnp.asarray(images, jnp.float32), mode), train=False)
  return np.asarray(jnp.argmax(logits, -1)) == np.arange(len(images))


def transfer_table(recipes, steps, seeds, log, first_seed=0):
  """One row per recipe: the share of the 10 * seeds class images (seeds first_seed, first_seed + 1, ...) each judge
  recognises as their class."""
  model, variables, _ = (everyone := judges())["resnet20"]
  rows = []
  for name, options in recipes.items():
    options = {"steps": steps, **options}
    if options.get("squash", "sigmoid") is not None:  # [0, 1] pixels: mapped into resnet20's input space
      options["preprocess"] = "torch"
    started = time.perf_counter()
    scores = {judge: [] for judge in everyone}
    for seed in range(first_seed, first_seed + seeds):
      inputs = jax.block_until_ready(explain.maximize_activation(model, variables, list(range(CLASSES)),
                                                                 input_shape=(32, 32, 3),
                                                                 seed=seed, **options))
      images = pixels_of(inputs)
      for judge in everyone:
        scores[judge].append(recognised(everyone[judge], images))
    seconds = (time.perf_counter() - started) / seeds
    scores = {judge: np.stack(values) for judge, values in scores.items()}  # (seeds, classes)
    others = [float(np.mean(scores[judge])) for judge in everyone if judge != "resnet20"]
    row = {"recipe": name, "options": {k: str(v)[:200] for k, v in options.items()}, "seeds": seeds,
           "first_seed": first_seed,
           "seconds": seconds, "resnet20": float(np.mean(scores["resnet20"])), "keras_mean": float(np.mean(others)),
           **{judge: float(np.mean(scores[judge])) for judge in everyone if judge != "resnet20"},
           "keras_votes_per_class": np.sum([scores[j] for j in everyone if j != "resnet20"], (0, 1)).tolist()}
    rows.append(row)
    log(json.dumps(row))
  return rows


def timing(log):
  """Seconds per image of the default recipe (256 steps) at batch 1, 4, 10 on resnet20, compile excluded."""
  model, variables = pretrained.load(str(RESNET20))
  rows = []
  for batch in (1, 4, 10):
    call = lambda: explain.maximize_activation(model, variables, list(range(batch)), input_shape=(32, 32, 3),
                                               preprocess="torch")
    jax.block_until_ready(call())  # compile
    started = time.perf_counter()
    jax.block_until_ready(call())
    seconds = time.perf_counter() - started
    rows.append({"batch": batch, "seconds": seconds, "seconds_per_image": seconds / batch})
    log(json.dumps(rows[-1]))
  return rows


GALLERIES = ("resnet20", "channels", "mobilenet")


def galleries(steps, docs: Path, log, which=GALLERIES):
  """README figures, with maximize_activation's defaults: docs/feature_vis_resnet20.png (the ten CIFAR classes),
  docs/feature_vis_resnet20_channels.png (16 channels of resnet20's conv3_block3_out) and
  docs/feature_vis_mobilenet.png (ImageNet classes of the shipped MobileNet 0.25); `which` names those to draw."""
  model, variables = pretrained.load(str(RESNET20))
  if "resnet20" in which:
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    pixels = explain.maximize_activation(model, variables, list(range(CLASSES)), input_shape=(32, 32, 3),
                                         preprocess="torch", steps=steps, return_pixels=True)
    viz.class_gallery(pixels, names, cols=10, size=1.0, path=docs / "feature_vis_resnet20.png",
                      title="resnet20 (akamaster), maximize_activation defaults")
  if "channels" in which:
    layer, channels = "conv3_block3_out", list(range(16))
    pixels = explain.maximize_activation(model, variables, layer=layer, filters=channels, input_shape=(32, 32, 3),
                                         preprocess="torch", steps=steps, return_pixels=True)
    viz.channel_grid(pixels, f"resnet20 {layer}", channels, path=docs / "feature_vis_resnet20_channels.png")
  if "mobilenet" not in which:
    return
  mobilenet = WEIGHTS / "mobilenet" / "mobilenet_2_5_224_tf.h5"
  model, variables = pretrained.load(str(mobilenet))
  short = [name.split(",")[0] for name in pretrained.imagenet_class_names()]
  chosen = ("tiger cat", "boxer", "goldfish", "flamingo", "lemon")
  started = time.perf_counter()
  pixels = explain.maximize_activation(model, variables, [short.index(name) for name in chosen],
                                       input_shape=(224, 224, 3), preprocess="tf", steps=steps, return_pixels=True)
  jax.block_until_ready(pixels)
  log(json.dumps({"mobilenet_seconds": time.perf_counter() - started, "images": len(chosen), "steps": steps}))
  viz.class_gallery(pixels, chosen, cols=len(chosen), size=1.6, path=docs / "feature_vis_mobilenet.png",
                    title="MobileNet 0.25 (ImageNet), maximize_activation defaults")


def markdown(rows) -> str:
  keras = [k for k in rows[0] if k.startswith(("andrewtzeva", "sagecodes"))]
  lines = ["| recipe | resnet20 | " + " | ".join(keras) + " | Keras mean | seconds per 10 images (with compile) |",
           "|---|---|" + "---|" * len(keras) + "---|---|"]
  for row in rows:
    lines.append(f"| {row['recipe']} | {row['resnet20']:.0%} | " + " | ".join(f"{row[k]:.0%}" for k in keras) +
                 f" | **{row['keras_mean']:.0%}** | {row['seconds']:.0f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=256, help="steps for the recipes that do not fix them")
  parser.add_argument("--only", default=None, help="run only the recipes whose name contains this")
  parser.add_argument("--timing", action="store_true", help="time per image and batch scaling instead")
  parser.add_argument("--seeds", type=int, default=1, help="seeds per recipe (10 class images each)")
  parser.add_argument("--first_seed", type=int, default=0,
                      help="first seed (seeds 0-2 chose the default: a later start checks it on fresh images)")
  parser.add_argument("--tune", action="store_true", help="run the TUNING variations of the default instead")
  parser.add_argument("--gallery", nargs="?", const=",".join(GALLERIES), default=None,
                      help=f"write the README's galleries to --docs instead (all, or some of {','.join(GALLERIES)})")
  parser.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs"), help="gallery folder")
  args = parser.parse_args()
  log = lambda line: print(line, flush=True)
  if args.gallery:
    return galleries(args.steps, Path(args.docs), log, args.gallery.split(","))
  stamp = common.environment()
  if args.timing:
    result = {"environment": stamp, "timing": timing(log)}
    stem = "feature-vis-timing"
  else:
    recipes = {k: v for k, v in (TUNING if args.tune else RECIPES).items() if args.only is None or args.only in k}
    rows = transfer_table(recipes, args.steps, args.seeds, log, args.first_seed)
    result = {"environment": stamp, "steps": args.steps, "seeds": args.seeds, "first_seed": args.first_seed,
              "rows": rows}
    stem = "feature-vis-tuning" if args.tune else "feature-vis-transfer"
    if args.first_seed:
      stem += f"-seeds{args.first_seed}-{args.first_seed + args.seeds - 1}"
    print(markdown(rows))
  out = Path(__file__).resolve().parent / "results"
  out.mkdir(exist_ok=True)
  date = time.strftime("%Y-%m-%d")
  path = out / f"{date}-{stem}.json"
  path.with_suffix(".tmp").write_text(json.dumps(result, indent=1) + "\n")
  path.with_suffix(".tmp").rename(path)
  if not args.timing:
    (out / f"{date}-{stem}.md").write_text(markdown(rows) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
