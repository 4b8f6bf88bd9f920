"""The GPU/TPU path, measured: ResNet50 training steps and explainers on one accelerator, beside PyTorch.

  python bench/gpu.py                 # one H200: estimated 4-6 minutes (not measured yet; budget: under 8)
  python bench/gpu.py --tiny          # the same code on CPU in well under a minute (resnet18, 64 px, batch 4)
  python bench/gpu.py --sections train --out /tmp/gpu   # writes /tmp/gpu.json and /tmp/gpu.md

Sections (each interleaves its contenders A B A B ... in this process with bench/common.py's timer: the first call
of each is its compile / warm-up, reported as `compile s`, then the median over --repeats rounds):
  train    one optimizer step of ResNet50 at 224 px, batch 256, SGD momentum 0.9 Nesterov, softmax cross-entropy:
           cnnjax's jitted train_step (the one train.py runs: uint8 batch rescaled inside, donated state) in
           float32 and in bfloat16 compute (`model_options.dtype`), and PyTorch with channels_last, in float32 and
           with AMP (autocast to bfloat16; `torch.backends.cudnn.benchmark` on), the same architecture and
           parameter count (torchvision's ResNet50 with conv biases, as cnnjax's Keras-layout one has).
           FLOP/step: XLA's cost analysis of cnnjax's step before optimisation (the model's arithmetic, the same
           for every row; the compiled program's count is recorded beside it); MFU = FLOP/step / step time / the
           chip's dense bfloat16 peak (989 TFLOP/s for an H200 or H100 SXM; --peak_tflops for another chip),
           also for the float32 rows, so the rows compare on one scale.
  explain  Grad-CAM (layer conv5_block3_out / torch layer4), saliency and occlusion (window 32, stride 32, zeros;
           8 window positions per forward on both sides) at batch 64 on the same weights (torchvision's seeded
           ResNet50 with randomised BatchNorm statistics, moved with cnnjax.pretrained; `max |logit diff|` checks
           it), float32: cnnjax against captum (Saliency, LayerGradCam + interpolate, Occlusion) and
           pytorch-grad-cam (GradCAM), as their users call them.
A peer that is not installed (torch, torchvision, captum, pytorch-grad-cam) is skipped and listed under
`skipped`; a contender that fails gets its error in its row. float32 matmuls and convolutions use each framework's
default precision on the device (TF32 on NVIDIA GPUs for both XLA and cuDNN).

--tiny runs every section on CPU at toy sizes (resnet18 at 64 px, batch 4, explain batch 2, window 32 stride 32,
one short round): the numbers mean nothing, the point is that the code runs (tests/test_gpu_bench.py) with only
requirements.txt and requirements-dev.txt. Runs on jax 0.10.2 (the pin) and 0.11: it uses only jit / lower /
compile / cost_analysis and the device list.

Writes JSON and Markdown to --out (default bench/results/<date>-gpu.{json,md}, -gpu-tiny with --tiny) and prints
the Markdown.
"""
import argparse
import datetime
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# JAX takes 75% of the GPU's memory at start-up by default, which would leave PyTorch too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import common  # noqa: E402
from cnnjax import explain, models, pretrained  # noqa: E402
from cnnjax.train import step as step_lib  # noqa: E402

# Dense bfloat16 peaks in FLOP/s, by a substring of jax's device_kind (first match wins).
BF16_PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
              ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12), ("TPU v4", 275e12))
# cnnjax layer and torch module of the Grad-CAM layer (the last block's output).
CAM_LAYERS = {"resnet18": ("conv5_block2_out", "layer4"), "resnet34": ("conv5_block3_out", "layer4"),
              "resnet50": ("conv5_block3_out", "layer4")}
IMAGES_PER_FORWARD = 512  # occlusion: window positions per forward = this // batch, on both sides
LEARNING_RATE = 0.1


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


TINY = dict(model="resnet18", image_size=64, batch=4, explain_batch=2, window=32, stride=32, repeats=1, target=0.05)
FULL = dict(model="resnet50", image_size=224, batch=256, explain_batch=64, window=32, stride=32, repeats=3,
            target=1.0)


def settings(args, platform: str) -> dict:
  """The sizes of a run: the issue's on a GPU or TPU, toy ones with --tiny or on a CPU (where ResNet50 at batch
  256 would take hours); flags given override either."""
  chosen = TINY if args.tiny or platform == "cpu" else FULL
  return {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in chosen.items()}


def device_info(peak_tflops) -> dict:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", "") or ""
  peak = peak_tflops * 1e12 if peak_tflops else next((p for name, p in BF16_PEAKS if name in kind), None)
  return {"platform": device.platform, "device_kind": kind, "devices": jax.device_count(),
          "bf16_peak_flops": peak}


def random_batch(batch: int, size: int, classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          rng.integers(0, classes, batch).astype(np.int32))


class Peers:
  """The optional peers, imported once, on the kind of device JAX runs on (CUDA beside a GPU, the CPU beside the
  CPU; none beside a TPU); what is missing goes to `skipped`."""

  def __init__(self, platform: str):
    self.skipped = []
    self.torch = self._import("torch")
    self.device = None
    if self.torch is not None:
      self.device = {"gpu": "cuda" if self.torch.cuda.is_available() else None, "cpu": "cpu"}.get(platform)
      if self.device is None:
        self.skipped.append(f"torch (no torch device beside JAX's {platform})")
        self.torch = None
      else:
        self.torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels once
    self.torchvision = self._import("torchvision") if self.torch else None
    self.captum = self._import("captum.attr") if self.torch else None
    self.grad_cam = self._import("pytorch_grad_cam") if self.torch else None
    if self.torch is None:
      self.skipped.append("torchvision, captum, pytorch-grad-cam (they need torch)")

  def _import(self, name):
    try:
      return __import__(name, fromlist=["_"])
    except Exception as error:  # pylint: disable=broad-except  # missing, or broken (a CUDA mismatch)
      self.skipped.append(f"{name} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
      return None

  def sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# train

def _model_options(name: str) -> dict:
  return {"stride_on_3x3": True} if name in ("resnet50", "resnet101", "resnet152") else {}


def cnnjax_train(name, size, batch, classes, dtype, info: dict):
  """cnnjax's train step, compiled ahead of time on the first call (that call's time is the compile)."""
  model = models.create(name, num_classes=classes, **_model_options(name), **({"dtype": dtype} if dtype else {}))
  tx = optax.sgd(LEARNING_RATE, momentum=0.9, nesterov=True)
  state = step_lib.create_train_state(model, tx, (size, size, 3), seed=0)
  info["params"] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  step = jax.jit(functools.partial(step_lib.train_step, model=model, num_classes=classes,
                                   preprocess={"mode": "rescale"}), donate_argnums=0)
  images, labels = random_batch(batch, size, classes)
  inputs = {"images": jax.device_put(images), "labels": jax.device_put(labels)}
  cell = {"state": state}

  def call():
    if "compiled" not in cell:
      lowered = step.lower(cell["state"], inputs)
      cell["compiled"] = lowered.compile()
      info["flops"] = _flops(lowered)
      info["compiled_flops"] = _flops(cell["compiled"])
    cell["state"], metrics = cell["compiled"](cell["state"], inputs)
    return cell["state"], metrics
  return call


def _flops(stage) -> float:
  try:
    return common.flops_of(stage)
  except Exception:  # pylint: disable=broad-except  # a backend without a cost model
    return float("nan")


def torch_train(peers: Peers, name, size, batch, classes, amp: bool, info: dict):
  torch = peers.torch
  import peers_torch  # pylint: disable=import-outside-toplevel  # bench/peers_torch.py: needs torch, torchvision
  torch.manual_seed(0)
  if name == "resnet50":
    model = peers_torch.resnet50(classes, conv_bias=True)
  else:  # torchvision's basic-block ResNets, with conv biases as cnnjax's Keras layout has them
    model = getattr(peers.torchvision.models, name)(weights=None, num_classes=classes)
    for module in list(model.modules()):
      for child_name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Conv2d):
          setattr(module, child_name, torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                                      child.stride, child.padding, bias=True))
  info["params"] = sum(p.numel() for p in model.parameters())
  model = model.to(peers.device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, nesterov=True)
  images, labels = random_batch(batch, size, classes)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(peers.device)
  x = (x.float() / 255.0).contiguous(memory_format=torch.channels_last)
  y = torch.from_numpy(labels).long().to(peers.device)

  def call():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(peers.device, dtype=torch.bfloat16, enabled=amp):
      loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    peers.sync()
  return call


def section_train(config, device, peers: Peers) -> list:
  name, size, batch, classes = config["model"], config["image_size"], config["batch"], 1000
  log(f"train {name} {size}px batch {batch} on {device['device_kind'] or device['platform']}")
  infos = {"cnnjax float32": {}, "cnnjax bfloat16": {}}
  calls = {"cnnjax float32": cnnjax_train(name, size, batch, classes, None, infos["cnnjax float32"]),
           "cnnjax bfloat16": cnnjax_train(name, size, batch, classes, "bfloat16", infos["cnnjax bfloat16"])}
  if peers.torch is not None and peers.torchvision is not None:
    for label, amp in (("torch float32 channels_last", False), ("torch AMP bf16 channels_last", True)):
      infos[label] = {}
      try:
        calls[label] = torch_train(peers, name, size, batch, classes, amp, infos[label])
      except Exception as error:  # pylint: disable=broad-except
        infos[label]["error"] = f"{type(error).__name__}: {error}"
  timed = common.interleave(calls, repeats=config["repeats"], target_seconds=config["target"], log=log)
  # The model's arithmetic: XLA's pre-optimisation count of cnnjax's float32 step, the same work in every row.
  model_flops = infos["cnnjax float32"].get("flops")
  peak = device["bf16_peak_flops"]
  rows = []
  for label, info in infos.items():
    result = timed.get(label, {})
    speed = common.images_per_second(result, batch) if "median_s" in result else None
    achieved = model_flops / result["median_s"] if speed and model_flops and np.isfinite(model_flops) else None
    rows.append({"model": name, "input": f"{size}px", "batch": batch, "framework": label,
                 "params": info.get("params"), "images/s": speed,
                 "step ms": 1e3 * result["median_s"] if "median_s" in result else None,
                 "GFLOP/step": model_flops / 1e9 if model_flops else None,
                 "compiled GFLOP/step": info["compiled_flops"] / 1e9 if info.get("compiled_flops") else None,
                 "TFLOP/s": achieved / 1e12 if achieved else None,
                 "MFU %": 100 * achieved / peak if achieved and peak else None,
                 "compile s": result.get("compile_s"), "error": info.get("error") or result.get("error")})
  counts = {row["params"] for row in rows if row["params"]}
  if len(counts) > 1:
    for row in rows:
      row["error"] = row["error"] or f"parameter counts differ across frameworks: {sorted(counts)}"
  return rows


# ---------------------------------------------------------------------------------------------------------------
# explain

def same_weights(peers: Peers, name: str, workdir: str):
  """(torch model in eval mode on its device, cnnjax model, variables): torchvision's seeded weights, randomised
  BatchNorm statistics, saved as .npz and imported with cnnjax.pretrained."""
  torch = peers.torch
  torch.manual_seed(0)
  torch_model = getattr(peers.torchvision.models, name)(weights=None)
  for module in torch_model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.1, 0.1)
      module.running_var.uniform_(0.5, 1.5)
  path = os.path.join(workdir, f"{name}.npz")
  np.savez(path, **{k: v.numpy() for k, v in torch_model.state_dict().items()})
  model, variables = pretrained.load(path)
  return torch_model.eval().to(peers.device), model, variables


def cnnjax_explainers(model, variables, images, targets, layer: str, window: int, stride: int) -> dict:
  batch = images.shape[0]
  functions = {
      "saliency": lambda v, x, t: explain.saliency(model, v, x, t),
      "gradcam": lambda v, x, t: explain.gradcam(model, v, x, t, layer=layer),
      "occlusion": lambda v, x, t: explain.occlusion(model, v, x, t, window=window, strides=stride,
                                                     chunk_size=max(1, IMAGES_PER_FORWARD // batch)),
  }
  calls = {}
  for method, function in functions.items():
    cell = {}

    def call(function=function, cell=cell):
      if "compiled" not in cell:
        cell["compiled"] = jax.jit(function).lower(variables, images, targets).compile()
      return cell["compiled"](variables, images, targets)
    calls[(method, "cnnjax")] = call
  return calls


def peer_explainers(peers: Peers, torch_model, layer_path: str, x, targets: list, size: int, window: int,
                    stride: int) -> dict:
  calls = {}
  layer = torch_model.get_submodule(layer_path)

  def synced(function):
    def call():
      out = function()
      peers.sync()
      return out
    return call

  if peers.captum is not None:
    attr = peers.captum
    saliency, layer_cam, occlusion = attr.Saliency(torch_model), attr.LayerGradCam(torch_model, layer), \
        attr.Occlusion(torch_model)
    calls[("saliency", "captum")] = synced(lambda: saliency.attribute(x, target=targets, abs=False))
    calls[("gradcam", "captum")] = synced(lambda: attr.LayerAttribution.interpolate(
        layer_cam.attribute(x, target=targets, relu_attributions=True), (size, size), "bilinear"))
    calls[("occlusion", "captum")] = synced(lambda: occlusion.attribute(
        x, target=targets, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0,
        perturbations_per_eval=max(1, IMAGES_PER_FORWARD // len(targets))))
  if peers.grad_cam is not None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=import-outside-toplevel
    import copy  # pylint: disable=import-outside-toplevel
    cam_model = copy.deepcopy(torch_model)  # its hooks stay on the model it is given
    grad_cam = peers.grad_cam.GradCAM(model=cam_model, target_layers=[cam_model.get_submodule(layer_path)])
    cam_targets = [ClassifierOutputTarget(t) for t in targets]
    calls[("gradcam", "pytorch-grad-cam")] = synced(lambda: grad_cam(input_tensor=x, targets=cam_targets))
  return calls


def section_explain(config, peers: Peers) -> list:
  name, size, batch = config["model"], config["image_size"], config["explain_batch"]
  window, stride = min(config["window"], size), min(config["stride"], size)
  layer, layer_path = CAM_LAYERS[name]
  log(f"explain {name} {size}px batch {batch}")
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, 1000, batch)
  x_jax = pretrained.preprocess(images, "torch")
  targets = jnp.asarray(labels)
  calls, logit_difference = {}, None
  with tempfile.TemporaryDirectory() as workdir:
    if peers.torch is not None and peers.torchvision is not None:
      torch_model, model, variables = same_weights(peers, name, workdir)
      x_torch = peers.torch.from_numpy(np.asarray(x_jax).transpose(0, 3, 1, 2).copy()).to(peers.device)
      with peers.torch.no_grad():
        logits = torch_model(x_torch).float().cpu().numpy()
      logit_difference = float(np.abs(np.asarray(jax.jit(model.apply)(variables, x_jax)) - logits).max())
      calls.update(peer_explainers(peers, torch_model, layer_path, x_torch, labels.tolist(), size, window,
                                   stride))
    else:  # no torch: cnnjax alone, on its own random initialisation
      model = models.create(name, num_classes=1000, **_model_options(name))
      variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x_jax)
    calls = {**cnnjax_explainers(model, variables, x_jax, targets, layer, window, stride), **calls}
    timed = common.interleave(calls, repeats=config["repeats"], target_seconds=config["target"], log=log)
  rows = []
  for (method, framework), result in timed.items():
    ours = timed.get((method, "cnnjax"), {})
    rows.append({"model": name, "input": f"{size}px", "batch": batch, "method": method, "framework": framework,
                 "images/s": common.images_per_second(result, batch), "compile s": result.get("compile_s"),
                 # images/s of cnnjax / images/s of this (> 1: cnnjax is faster)
                 "cnnjax / this": common.ratio(result.get("median_s"), ours.get("median_s"))
                 if framework != "cnnjax" else None,
                 "max |logit diff|": logit_difference if framework == "cnnjax" and method == "saliency" else None,
                 "error": result.get("error")})
  return rows


# ---------------------------------------------------------------------------------------------------------------

COLUMNS = {
    "Training step": ["model", "input", "batch", "framework", "params", "images/s", "step ms", "GFLOP/step",
                      "compiled GFLOP/step", "TFLOP/s", "MFU %", "compile s", "error"],
    "Explainers": ["model", "input", "batch", "method", "framework", "images/s", "cnnjax / this", "compile s",
                   "max |logit diff|", "error"],
}


def output_paths(out, tiny: bool):
  if out is None:
    stem = HERE / "results" / f"{datetime.date.today().isoformat()}-gpu{'-tiny' if tiny else ''}"
  else:
    stem = Path(out)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".md") else stem
  return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")


def report_markdown(report: dict) -> str:
  env, device = report["environment"], report["device"]
  peak = device["bf16_peak_flops"]
  peak_text = f"bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "no known bf16 peak: MFU n/a"
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
  lines = [f"# bench/gpu.py {' '.join(report['argv'])}", "",
           f"{env['date']}, {device['device_kind'] or device['platform']} ({device['platform']}, {device['devices']} "
           f"device(s), {peak_text}); host {env['cpu']} ({env['cores']} cores); {versions}; "
           f"{report['seconds']:.0f} s in all"]
  if report["skipped"]:
    lines += ["", "Skipped: " + "; ".join(report["skipped"])]
  sections = {title: report[key] for title, key in (("Training step", "train"), ("Explainers", "explain"))
              if report.get(key)}
  return "\n".join(lines) + "\n\n" + common.sections_markdown(sections, COLUMNS) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="toy sizes on CPU: checks that the code runs")
  parser.add_argument("--sections", default="train,explain", help="comma-separated: train, explain")
  parser.add_argument("--model", choices=sorted(CAM_LAYERS), default=None)
  parser.add_argument("--image_size", type=int, default=None)
  parser.add_argument("--batch", type=int, default=None, help="training batch (default 256)")
  parser.add_argument("--explain_batch", type=int, default=None, help="explainer batch (default 64)")
  parser.add_argument("--window", type=int, default=None, help="occlusion window (default 32)")
  parser.add_argument("--stride", type=int, default=None, help="occlusion stride (default 32)")
  parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3)")
  parser.add_argument("--target", type=float, default=None, help="seconds per timed round (default 1)")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the chip's dense bf16 peak, if not in the built-in table (H200/H100/A100/L4/TPU)")
  parser.add_argument("--out", default=None, help="output path without extension (writes .json and .md)")
  args = parser.parse_args(argv)
  if args.tiny:
    jax.config.update("jax_platforms", "cpu")
  sections = [s for s in args.sections.split(",") if s]
  unknown = set(sections) - {"train", "explain"}
  if unknown:
    parser.error(f"unknown section(s) {sorted(unknown)}; choose from train, explain")
  json_path, md_path = output_paths(args.out, args.tiny)
  json_path.parent.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  device = device_info(args.peak_tflops)
  config = settings(args, device["platform"])
  log(f"settings: {config}")
  peers = Peers(device["platform"])
  report = {"argv": sys.argv[1:] if argv is None else list(argv), "settings": config, "device": device,
            "environment": common.environment(), "skipped": peers.skipped,
            "train": section_train(config, device, peers) if "train" in sections else [],
            "explain": section_explain(config, peers) if "explain" in sections else []}
  report["seconds"] = time.perf_counter() - started
  json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
  markdown = report_markdown(report)
  md_path.write_text(markdown)
  print(markdown)
  log(f"wrote {json_path} and {md_path}")
  return report


if __name__ == "__main__":
  main()
