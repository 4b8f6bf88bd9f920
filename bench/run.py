"""cnnjax against PyTorch (eager, torch.compile), Keras 3 (JAX backend), captum and pytorch-grad-cam, side by side.

  python bench/run.py --quick            # < 5 min on the 2-core dev VM
  python bench/run.py                    # full: resnet50 explainers at batch 32, longer repeats
  python bench/run.py --sections train --models vgg16 --repeats 7   # targeted rows

Sections (in this order, each interleaving cnnjax and its peers A B A B ... in this one process; medians of
`--repeats` rounds after compile / warm-up, which is reported separately; ratios are cnnjax / peer):
  peak      float32 matmul FLOP/s of XLA (jnp.dot) and of torch (MKL): the utilisation denominator.
  train     one optimizer step (SGD momentum 0.9, float32, same architecture and batch): cnnjax's jitted
            `train_step` (donated state) vs torch eager, torch.compile, Keras `train_on_batch`; plus cnnjax with
            bfloat16 compute. Achieved FLOP/s = XLA's FLOP count of cnnjax's compiled step / step time.
  explain   saliency, guided backprop, Grad-CAM on the same weights (moved with cnnjax.pretrained): cnnjax vs
            captum and pytorch-grad-cam; each method's time / one plain forward of the batch, per framework.
  pipeline  cnnjax.data on ../shared/data: JPEG decode, cached load, batches(), on-device augmentation, against
            the images/s the train step consumes.
Writes bench/results/<date>[-quick].{json,md} and prints the Markdown.
"""
import argparse
import copy
import datetime
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
# cnnjax's XLA:CPU setting goes to cnnjax's computations only, as compiler options (below), so that Keras runs
# with XLA's defaults as its users get them; importing cnnjax would otherwise set it for the whole process.
os.environ["CNNJAX_XLA_FLAGS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import common  # noqa: E402
import peers  # noqa: E402  (tests/peers.py: the same weights in torch and cnnjax)
import peers_torch  # noqa: E402
import cnnjax  # noqa: E402
from cnnjax import data as data_lib  # noqa: E402
from cnnjax import explain, models, pretrained  # noqa: E402
from cnnjax.train import step as step_lib  # noqa: E402

SHARED = HERE.parent.parent / "shared"
LEARNING_RATE = 0.01
TRAIN_ROWS = common.TRAIN_ROWS
# name: (image size, Grad-CAM layer in cnnjax, its torch module path)
LOOPED_IMAGES = 4
# cnnjax rows compile with cnnjax's XLA:CPU setting (what `import cnnjax` puts in XLA_FLAGS); `--variants` adds
# cnnjax rows compiled with other options, timed beside them in this one process.
CNNJAX_OPTIONS = cnnjax.XLA_CPU_COMPILER_OPTIONS
VARIANTS = {
    "xla-default": {},  # YNNPACK for convolutions, matmuls and reductions: XLA's default in jaxlib 0.10
    "ynn-dot-only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "no-ynn": {"xla_cpu_experimental_ynn_fusion_type": ""},  # XLA's own loops and Eigen for everything
}
EXPLAIN_MODELS = {"resnet50": (224, "conv5_block3_out", "layer4"), "resnet20": (32, "conv4_block3_out", "layer3")}


def log(message: str):
  print(message, file=sys.stderr, flush=True)


def random_batch(batch: int, size: int, classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), rng.integers(0, classes, batch).astype(np.int32)


def nchw(images_uint8) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images_uint8.transpose(0, 3, 1, 2), np.float32) / 255.0)


# ---------------------------------------------------------------------------------------------------------------
# peak

def section_peak(args) -> list:
  size = 2048
  a = jnp.asarray(np.random.default_rng(0).random((size, size), np.float32))
  dot = jax.jit(jnp.dot)
  ta = torch.from_numpy(np.asarray(a))
  timed = common.interleave({"xla": lambda: dot(a, a), "torch": lambda: torch.mm(ta, ta)},
                            repeats=args.repeats, target_seconds=args.target, log=log)
  flops = 2 * size ** 3
  return [{"what": f"float32 matmul {size}x{size}", "framework": name, "GFLOP/s": flops / r["median_s"] / 1e9}
          for name, r in timed.items() if "median_s" in r]


# ---------------------------------------------------------------------------------------------------------------
# train

def cnnjax_train(name, size, batch, classes, options, flops_out: dict, key: str,
                 compiler_options=CNNJAX_OPTIONS):
  model = models.create(name, num_classes=classes, **options)
  state = step_lib.create_train_state(model, optax.sgd(LEARNING_RATE, momentum=0.9), (size, size, 3), seed=0)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, num_classes=classes,
                                   preprocess={"mode": "rescale"}), donate_argnums=0)
  images, labels = random_batch(batch, size, classes)
  inputs = {"images": jnp.asarray(images), "labels": jnp.asarray(labels)}
  cell = {"state": state}
  flops_out[f"{key} params"] = sum(x.size for x in jax.tree_util.tree_leaves(state.params))

  def call():
    if "compiled" not in cell:  # compiled ahead of time once, so its FLOP count costs no second compile
      cell["compiled"] = step.lower(cell["state"], inputs).compile(compiler_options)
      flops_out[key] = common.flops_of(cell["compiled"])
    cell["state"], metrics = cell["compiled"](cell["state"], inputs)
    return cell["state"], metrics
  return call


def torch_train(name, size, batch, classes, compiled: bool, counts: dict):
  torch.manual_seed(0)
  model = peers_torch.BUILDERS[name](classes, **({"conv_bias": True} if name == "resnet50" else {})).train()
  counts["torch params"] = peers_torch.parameter_count(model)
  optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
  forward = torch.compile(model) if compiled else model
  images, labels = random_batch(batch, size, classes)
  x, y = nchw(images), torch.from_numpy(labels).long()

  def call():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(x), y)
    loss.backward()
    optimizer.step()
  return call


def keras_train(name, size, batch, classes, counts: dict):
  import keras  # pylint: disable=import-outside-toplevel
  import peers_keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  model = peers_keras.BUILDERS[name](classes, size)
  counts["keras params"] = peers_keras.trainable_count(model)
  model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
  images, labels = random_batch(batch, size, classes)
  x, y = jnp.asarray(images, jnp.float32) / 255.0, jnp.asarray(labels)
  return lambda: model.train_on_batch(x, y)


def section_train(args, peak) -> list:
  rows = []
  for name in args.models:
    if name not in TRAIN_ROWS:
      continue
    size, batch, classes, options = TRAIN_ROWS[name]
    log(f"train {name} {size}px batch {batch}")
    info = {}
    calls = {"cnnjax": cnnjax_train(name, size, batch, classes, options, info, "cnnjax"),
             "torch eager": torch_train(name, size, batch, classes, False, info)}
    if name in args.torch_compile:
      calls["torch.compile"] = torch_train(name, size, batch, classes, True, info)
    if name in args.keras:
      calls["keras (jax)"] = keras_train(name, size, batch, classes, info)
    for variant in args.variants:
      calls[f"cnnjax {variant}"] = cnnjax_train(name, size, batch, classes, options, info, f"cnnjax {variant}",
                                                VARIANTS[variant])
    if name in args.bf16:
      calls["cnnjax bf16"] = cnnjax_train(name, size, batch, classes, {**options, "dtype": "bfloat16"}, info,
                                          "cnnjax bf16")
    counts = {info[key] for key in ("cnnjax params", "torch params", "keras params") if key in info}
    if len(counts) != 1:
      raise SystemExit(f"{name}: parameter counts differ across frameworks: {info}")
    timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=log)
    cnnjax_speed = common.images_per_second(timed["cnnjax"], batch)
    for framework, result in timed.items():
      speed = common.images_per_second(result, batch)
      step_flops = info.get(framework if framework.startswith("cnnjax") else "cnnjax")
      achieved = step_flops / result["median_s"] if speed and step_flops else None
      rows.append({"model": name, "input": f"{size}px", "batch": batch, "params": counts.copy().pop(),
                   "framework": framework, "compile s": result.get("compile_s"), "images/s": speed,
                   "cnnjax / this": common.ratio(cnnjax_speed, speed) if framework != "cnnjax" else None,
                   "GFLOP/step": step_flops / 1e9 if step_flops else None,
                   "GFLOP/s": achieved / 1e9 if achieved else None,
                   "% of XLA peak": 100 * achieved / peak if achieved and peak else None,
                   "error": result.get("error")})
  return rows


# ---------------------------------------------------------------------------------------------------------------
# explain

def load_same_weights(name: str, workdir: str):
  """(torch model, cnnjax model, cnnjax variables) holding the same weights, moved with cnnjax.pretrained: the
  shipped resnet20, or (no ResNet50 weights on disk) torchvision's seeded initialisation with randomised BatchNorm
  statistics (values do not change the cost) — tests/peers.py, which the explainer tests compare on too."""
  if name == "resnet20":
    return peers.resnet20_pair(SHARED)
  return peers.resnet50_pair(workdir)


def torch_explainers(torch_model, layer_path: str, x: torch.Tensor, targets: list, size: int) -> dict:
  """The peers' calls, each on its own copy of the model: pytorch-grad-cam's hooks stay registered on the model
  it is given and its guided backprop swaps the model's ReLUs, which must not slow down the others."""
  # pylint: disable=import-outside-toplevel
  from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Saliency
  from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  layer = torch_model.get_submodule(layer_path)
  saliency, guided = Saliency(torch_model), GuidedBackprop(torch_model)
  layer_cam = LayerGradCam(torch_model, layer)
  cam_model, guided_model = copy.deepcopy(torch_model), copy.deepcopy(torch_model)
  grad_cam = GradCAM(model=cam_model, target_layers=[cam_model.get_submodule(layer_path)])
  guided_relu = GuidedBackpropReLUModel(guided_model, device="cpu")
  cam_targets = [ClassifierOutputTarget(t) for t in targets]

  def forward():
    with torch.no_grad():
      return torch_model(x)

  def captum_gradcam():  # upsampled to the input, as cnnjax's and pytorch-grad-cam's maps are
    return LayerAttribution.interpolate(layer_cam.attribute(x, target=targets, relu_attributions=True),
                                        (size, size), "bilinear")

  return {
      ("forward", "torch"): forward,
      ("saliency", "captum"): lambda: saliency.attribute(x, target=targets, abs=False),
      ("guided", "captum"): lambda: guided.attribute(x, target=targets),
      # GuidedBackpropReLUModel explains one image per call (output[0, target]): a batch is a loop, timed over
      # its first LOOPED_IMAGES images (images/s is per image either way).
      ("guided", "pytorch-grad-cam"): lambda: [guided_relu(x[i:i + 1], target_category=t)
                                                for i, t in enumerate(targets[:LOOPED_IMAGES])],
      ("gradcam", "captum"): captum_gradcam,
      ("gradcam", "pytorch-grad-cam"): lambda: grad_cam(input_tensor=x, targets=cam_targets),
  }


def cnnjax_explainers(model, variables, images, targets, layer, compiler_options) -> dict:
  """cnnjax's forward pass and explainers (the public functions) compiled with `compiler_options`: an outer jit
  into which cnnjax's own jit inlines."""
  functions = {
      "forward": lambda v, x, t: model.apply(v, x, train=False),
      "saliency": lambda v, x, t: explain.saliency(model, v, x, t),
      "guided": lambda v, x, t: explain.saliency(model, v, x, t, modifier="guided"),
      "gradcam": lambda v, x, t: explain.gradcam(model, v, x, t, layer=layer),
  }
  calls = {}
  for method, function in functions.items():
    cell = {}

    def call(function=function, cell=cell):
      if "compiled" not in cell:
        cell["compiled"] = jax.jit(function).lower(variables, images, targets).compile(compiler_options)
      return cell["compiled"](variables, images, targets)
    calls[method] = call
  return calls


def section_explain(args) -> list:
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for name, (size, layer, layer_path) in EXPLAIN_MODELS.items():
      if name not in args.models:
        continue
      torch_model, model, variables = load_same_weights(name, workdir)
      forward = jax.jit(functools.partial(model.apply, train=False))
      for batch in args.explain_batches[name]:
        log(f"explain {name} {size}px batch {batch}")
        images, labels = random_batch(batch, size, 1000 if name == "resnet50" else 10, seed=1)
        x_jax = pretrained.preprocess(images, "torch")
        x_torch = torch.from_numpy(np.asarray(x_jax).transpose(0, 3, 1, 2).copy())
        targets = jnp.asarray(labels)
        with torch.no_grad():
          logit_difference = float(np.abs(np.asarray(forward(variables, x_jax)) -
                                          torch_model(x_torch).numpy()).max())
        calls = {
            **{(method, "cnnjax"): call for method, call in cnnjax_explainers(
                model, variables, x_jax, targets, layer, CNNJAX_OPTIONS).items()},
            **{(method, f"cnnjax {variant}"): call for variant in args.variants
               for method, call in cnnjax_explainers(model, variables, x_jax, targets, layer,
                                                     VARIANTS[variant]).items()},
            **torch_explainers(torch_model, layer_path, x_torch, labels.tolist(), size)}
        timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=log)
        timed = {key: dict(result, images_s=common.images_per_second(
            result, min(batch, LOOPED_IMAGES) if key == ("guided", "pytorch-grad-cam") else batch))
                 for key, result in timed.items()}
        for (method, framework), result in timed.items():
          forward_key = ("forward", framework if framework.startswith("cnnjax") else "torch")
          rows.append({"model": name, "input": f"{size}px", "batch": batch, "method": method,
                       "framework": framework, "compile s": result.get("compile_s"), "images/s": result["images_s"],
                       # time per image / forward time per image (the looped guided backprop compares too)
                       "x forward": common.ratio(timed[forward_key]["images_s"], result["images_s"]),
                       "cnnjax / this": common.ratio(timed[(method, "cnnjax")]["images_s"], result["images_s"])
                       if framework != "cnnjax" else None,
                       "max |logit diff|": logit_difference if method == "forward" else None,
                       "error": result.get("error")})
  return rows


# ---------------------------------------------------------------------------------------------------------------
# pipeline

AUGMENT = {"horizontal_flip": True, "rotation": 15.0, "width_shift": 0.1, "height_shift": 0.1}  # simple_cnn's


def section_pipeline(args) -> list:
  """Each source's stages interleaved with the cnnjax train step that consumes it (the fastest model at that
  size: simple_cnn at the training row's batch 128 for CIFAR, catdog_cnn at its config's batch 32 for 150px)."""
  rows = []
  sources = {"cifar10_jpeg 32px": ("cifar10_jpeg", 32, args.cifar_per_class, "simple_cnn", 10, 128),
             "cats_vs_dogs 150px": ("cats_vs_dogs", 150, args.catdog_per_class, "catdog_cnn", 2, 32)}
  for source, (folder, size, per_class, consumer, classes, batch) in sources.items():
    log(f"pipeline {source}")
    path = f"folder:{SHARED / 'data' / folder / 'train.zip'}"
    with tempfile.TemporaryDirectory() as cache:
      started = time.perf_counter()
      splits = data_lib.load(path, image_size=size, limit_per_class=per_class, cache_dir=cache, validation_split=0)
      decode_s = time.perf_counter() - started
      started = time.perf_counter()
      data_lib.load(path, image_size=size, limit_per_class=per_class, cache_dir=cache, validation_split=0)
      cached_s = time.perf_counter() - started
    n = len(splits.train)
    augment = jax.jit(lambda images, key: data_lib.preprocess(
        data_lib.augment(images.astype(jnp.float32), key, **AUGMENT), "rescale"))
    device_batch = jax.device_put(splits.train.images[:batch])
    key = jax.random.PRNGKey(0)

    def host_batches():  # one epoch of batches() put on the device: the train loop's host side, per step
      out = None
      for item in data_lib.batches(splits.train, batch_size=batch, seed=0, epoch=0, shuffle=True):
        out = jax.device_put(item["images"])
      return out

    calls = {"batches": host_batches, "augment": lambda: augment(device_batch, key),
             "train": cnnjax_train(consumer, size, batch, classes, {}, {}, "cnnjax")}
    timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=log)
    train_speed = common.images_per_second(timed["train"], batch)
    stages = {"JPEG decode + resize (once, then cached)": n / decode_s, "cached load (npz)": n / cached_s,
              "batches() + device_put": (n // batch) * batch / timed["batches"]["median_s"],
              "augment + rescale on device (jit)": batch / timed["augment"]["median_s"]}
    for stage, speed in stages.items():
      rows.append({"source": source, "images": n, "stage": stage, "images/s": speed,
                   "consumer": f"{consumer} train step, batch {batch}", "consumer images/s": train_speed,
                   "stage / consumer": common.ratio(speed, train_speed)})
  return rows


# ---------------------------------------------------------------------------------------------------------------

PEERS = ("torch eager", "torch.compile", "keras (jax)")


def summaries(results: dict) -> dict:
  """One line per training row and per explainer (model, batch, method): the ratios the issue's goals name."""
  train, explain_rows = {}, {}
  for row in results["Training step"]:
    line = train.setdefault(row["model"], {"model": row["model"], "input": row["input"], "batch": row["batch"]})
    line[row["framework"]] = row["images/s"]
    if row["framework"] == "cnnjax":
      line["cnnjax % of XLA peak"] = row["% of XLA peak"]
  for line in train.values():
    peers = [line[peer] for peer in PEERS if line.get(peer)]
    line["cnnjax / fastest peer"] = common.ratio(line.get("cnnjax"), max(peers)) if peers else None
  for row in results["Explainers"]:
    key = (row["model"], row["batch"], row["method"])
    line = explain_rows.setdefault(key, {"model": row["model"], "input": row["input"], "batch": row["batch"],
                                         "method": row["method"]})
    framework = "torch" if row["framework"] == "torch" else row["framework"]
    line[framework] = row["images/s"]
    if framework != "cnnjax" and row["method"] != "forward":
      line[f"cnnjax / {framework}"] = row["cnnjax / this"]
    if row["method"] != "forward":
      line[f"{framework} x forward"] = row["x forward"]
  return {"Training summary (images/s)": list(train.values()),
          "Explainer summary (images/s)": list(explain_rows.values())}


COLUMNS = {
    "Training summary (images/s)": ["model", "input", "batch", "cnnjax", *PEERS, "cnnjax bf16",
                                    "cnnjax / fastest peer", "cnnjax % of XLA peak"],
    "Explainer summary (images/s)": ["model", "input", "batch", "method", "cnnjax", "torch", "captum",
                                     "pytorch-grad-cam", "cnnjax / captum", "cnnjax / pytorch-grad-cam",
                                     "cnnjax x forward", "captum x forward", "pytorch-grad-cam x forward"],
    "Peak float32 matmul": ["what", "framework", "GFLOP/s"],
    "Training step": ["model", "input", "batch", "params", "framework", "compile s", "images/s", "cnnjax / this",
                      "GFLOP/step", "GFLOP/s", "% of XLA peak", "error"],
    "Explainers": ["model", "input", "batch", "method", "framework", "compile s", "images/s", "x forward",
                   "cnnjax / this", "max |logit diff|", "error"],
    "Input pipeline": ["source", "images", "stage", "images/s", "consumer", "consumer images/s",
                       "stage / consumer"],
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--sections", default="peak,train,explain,pipeline")
  parser.add_argument("--models", default="simple_cnn,resnet20,vgg16,resnet50")
  parser.add_argument("--repeats", type=int)
  parser.add_argument("--target", type=float, help="seconds per timed round (default 0.2 quick, 1.5 full)")
  parser.add_argument("--torch-compile", help="models that also get a torch.compile row, comma-separated or "
                      "'none' (default: all; quick: simple_cnn, as compiling the larger training graphs takes minutes)")
  parser.add_argument("--keras", help="models that get a Keras row (default: all; quick: simple_cnn)")
  parser.add_argument("--bf16", help="models that get a cnnjax bfloat16 row (default: all; quick: none)")
  parser.add_argument("--resnet50-batches", help="explainer batches for resnet50 (default 1 quick; 1,32 full)")
  parser.add_argument("--variants", default="", help=f"cnnjax under other XLA options too: {', '.join(VARIANTS)}")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", default=str(HERE / "results"))
  args = parser.parse_args()
  args.repeats = args.repeats or (3 if args.quick else 5)
  args.target = args.target or (0.2 if args.quick else 1.5)
  args.models = args.models.split(",")
  args.variants = [variant for variant in args.variants.split(",") if variant]
  every = ",".join(TRAIN_ROWS)
  for option, quick_default in (("torch_compile", "simple_cnn"), ("keras", "simple_cnn"), ("bf16", "none")):
    chosen = getattr(args, option) or (quick_default if args.quick else every)
    setattr(args, option, [] if chosen == "none" else chosen.split(","))
  resnet50_batches = args.resnet50_batches or ("1" if args.quick else "1,32")
  args.explain_batches = {"resnet50": [int(b) for b in resnet50_batches.split(",")], "resnet20": [128]}
  args.cifar_per_class = 200 if args.quick else 2000
  args.catdog_per_class = 50 if args.quick else 1000
  torch.set_num_threads(args.threads)
  sections = args.sections.split(",")

  started = time.time()
  env = common.environment()
  env.update(mode="quick" if args.quick else "full", argv=sys.argv[1:], torch_threads=torch.get_num_threads())
  log(json.dumps(env))
  results = {}
  peak_rows = section_peak(args) if "peak" in sections or "train" in sections else []
  results["Peak float32 matmul"] = peak_rows
  xla_peak = next((row["GFLOP/s"] * 1e9 for row in peak_rows if row["framework"] == "xla"), None)
  results["Training step"] = section_train(args, xla_peak) if "train" in sections else []
  results["Explainers"] = section_explain(args) if "explain" in sections else []
  results["Input pipeline"] = section_pipeline(args) if "pipeline" in sections else []
  results = {**summaries(results), **results}
  env["seconds"] = round(time.time() - started, 1)
  env["load_average_end"] = os.getloadavg()

  text = (f"# bench/run.py {' '.join(sys.argv[1:])}\n\n{env['date']}, {env['cpu']}, {env['cores']} cores, "
          f"load {env['load_average'][0]:.1f} -> {env['load_average_end'][0]:.1f}, {env['seconds']} s; "
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "\n\n"
          + common.sections_markdown(results, COLUMNS) + "\n")
  print(text)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = f"{datetime.date.today()}{'-quick' if args.quick else ''}"
  if args.sections != parser.get_default("sections") or args.models != parser.get_default("models").split(","):
    stem += "-" + "-".join(sections + args.models)
  (out / f"{stem}.json").write_text(json.dumps({"environment": env, "results": results}, indent=1, default=str))
  (out / f"{stem}.md").write_text(text)
  log(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
  main()
