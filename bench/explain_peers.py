"""The explainers of issue #14 against captum and pytorch-grad-cam, side by side in one run on this machine.

  python bench/explain_peers.py [--quick] [--repeats 3] [--resnet50-batch 1] [--models resnet20,resnet50]
      [--methods scorecam,...] [--peer-per-image]

The shipped resnet20 (akamaster's CIFAR weights, 32px, batch 32) and a torchvision ResNet50 with random weights
(224px), the same weights in both frameworks (tests/peers.py). Per method: seconds per call of cnnjax (after its
compilation, reported separately) and of the peer at the settings the issue names (pytorch-grad-cam's
batch_size=64, captum's perturbations_per_eval=64), the speed-up peer / cnnjax, and cnnjax's cost in forward
passes of the same batch (XLA's FLOP count, `cnnjax.explain.cost`). Also ten classes of resnet20 at batch 128 in
one (B, 10) Grad-CAM call against ten single-class calls. resnet20 calls are timed interleaved (bench/common.py);
the ResNet50 Score-CAM / Ablation-CAM calls take minutes each, so they run once after compiling ahead of time.
Prints Markdown for bench/RESULTS.md and writes bench/results/<date>-explain-peers.{json,md}.
"""
import argparse
import datetime
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import common  # noqa: E402
import peers  # noqa: E402  (tests/peers.py: the same weights in torch and cnnjax)
from cnnjax import explain  # noqa: E402
from cnnjax.models import onednn  # noqa: E402

SHARED = HERE.parent.parent / "shared"
PEER_BATCH = 64  # pytorch-grad-cam's batch_size and captum's perturbations_per_eval, as the issue sets them


def _cnnjax(function, model, variables, images, targets, **options):
  """A call of the public explainer, compiled ahead of time: (call, compile seconds, forwards)."""
  jitted = jax.jit(lambda v, x, t: function(model, v, x, t, **options))
  started = time.perf_counter()
  compiled = jitted.lower(variables, images, targets).compile()
  compile_s = time.perf_counter() - started
  forwards = explain.cost(function, model, variables, images, targets, **options)["forwards"]
  return (lambda: compiled(variables, images, targets)), compile_s, forwards


def _grad_cam(kind, torch_model, layer_path, x, targets, **options):
  import pytorch_grad_cam  # pylint: disable=import-outside-toplevel
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=import-outside-toplevel
  method = getattr(pytorch_grad_cam, kind)(model=torch_model, target_layers=[torch_model.get_submodule(layer_path)],
                                           **options)
  if kind in ("ScoreCAM", "AblationCAM"):
    # AblationCAM takes batch_size; ScoreCAM reads the attribute only where it was set (else 16 masks per call).
    method.batch_size = PEER_BATCH
  cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
  return lambda: method(input_tensor=x, targets=cam_targets)


def _captum(kind, torch_model, x, targets, **options):
  import captum.attr  # pylint: disable=import-outside-toplevel
  method = captum.attr.__dict__[kind](torch_model)
  return lambda: method.attribute(x, target=[int(t) for t in targets], **options)


def resnet20_cases(torch_model, model, variables, images, targets):
  """{method: (cnnjax function, its options, peer call)} on resnet20."""
  x = peers.nchw(images)
  layer, layer_path = peers.RESNET20_LAYER
  grid = explain.grid_mask(32, 32, 4)  # 64 features of 4x4 pixels
  baselines = np.random.default_rng(2).normal(size=(8, 32, 32, 3)).astype(np.float32) * 0.2
  spread = float(np.mean(images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))))
  feature_mask = torch.from_numpy(np.asarray(grid))[None, None].expand(1, 3, 32, 32)
  return {
      "input_x_gradient": (explain.input_x_gradient, {}, _captum("InputXGradient", torch_model, x, targets)),
      "integrated_gradients (32 steps)": (explain.integrated_gradients, {"steps": 32}, _captum(
          "IntegratedGradients", torch_model, x, targets, n_steps=32, method="riemann_middle")),
      "gradient_shap (32 samples)": (explain.gradient_shap, {"baselines": baselines, "samples": 32}, _captum(
          "GradientShap", torch_model, x, targets, baselines=peers.nchw(baselines), n_samples=32)),
      "noise_tunnel(saliency, 16)": (
          functools.partial(explain.noise_tunnel, explain.saliency), {"samples": 16, "noise": 0.1},
          _noise_tunnel(torch_model, x, targets, 16, 0.1 * spread)),
      "scorecam": (explain.scorecam, {"layer": layer}, _grad_cam("ScoreCAM", torch_model, layer_path, x, targets)),
      "ablationcam": (explain.ablationcam, {"layer": layer},
                      _grad_cam("AblationCAM", torch_model, layer_path, x, targets)),
      "layercam": (explain.layercam, {"layer": layer}, _grad_cam("LayerCAM", torch_model, layer_path, x, targets)),
      "xgradcam": (explain.xgradcam, {"layer": layer}, _grad_cam("XGradCAM", torch_model, layer_path, x, targets)),
      "eigencam": (explain.eigencam, {"layer": layer}, _grad_cam("EigenCAM", torch_model, layer_path, x, targets)),
      "hirescam": (explain.hirescam, {"layer": layer}, _grad_cam("HiResCAM", torch_model, layer_path, x, targets)),
      "occlusion (window 4, stride 2)": (explain.occlusion, {"window": (4, 4), "strides": (2, 2)}, _captum(
          "Occlusion", torch_model, x, targets, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2),
          baselines=0.0, perturbations_per_eval=PEER_BATCH)),
      "feature_ablation (64 features)": (explain.feature_ablation, {"feature_mask": grid}, _captum(
          "FeatureAblation", torch_model, x, targets, feature_mask=feature_mask, perturbations_per_eval=PEER_BATCH)),
      "kernel_shap (64 features, 200 samples)": (explain.kernel_shap, {"feature_mask": grid, "samples": 200},
                                                 _kernel_shap(torch_model, x, targets, feature_mask, 200)),
  }


def _noise_tunnel(torch_model, x, targets, samples, stdev):
  import captum.attr  # pylint: disable=import-outside-toplevel
  tunnel = captum.attr.NoiseTunnel(captum.attr.Saliency(torch_model))
  return lambda: tunnel.attribute(x, target=[int(t) for t in targets], nt_type="smoothgrad", nt_samples=samples,
                                  stdevs=stdev, abs=False)


def _kernel_shap(torch_model, x, targets, feature_mask, samples):
  """captum's KernelShap explains one image per call (its regression is per example): a loop over the batch."""
  import captum.attr  # pylint: disable=import-outside-toplevel
  method = captum.attr.KernelShap(torch_model)
  return lambda: [method.attribute(x[i:i + 1], target=int(t), feature_mask=feature_mask, n_samples=samples,
                                   perturbations_per_eval=PEER_BATCH) for i, t in enumerate(targets)]


def section_resnet20(args, rows):
  torch_model, model, variables = peers.resnet20_pair(SHARED)
  images = np.random.default_rng(1).normal(size=(32, 32, 32, 3)).astype(np.float32)
  targets = np.random.default_rng(1).integers(0, 10, 32)
  cases = {name: case for name, case in resnet20_cases(torch_model, model, variables, images, targets).items()
           if not args.methods or name.startswith(tuple(args.methods))}
  calls, compiles, forwards = {}, {}, {}
  for name, (function, options, peer) in cases.items():
    call, compiles[name], forwards[name] = _cnnjax(function, model, variables, jnp.asarray(images),
                                                   jnp.asarray(targets), **options)
    calls[(name, "cnnjax")] = call
    calls[(name, "peer")] = peer
  timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=print)
  for name in cases:
    ours, theirs = timed[(name, "cnnjax")], timed.get((name, "peer"), {})
    rows.append({"model": "resnet20", "batch": 32, "method": name, "cnnjax s": ours.get("median_s"),
                 "peer s": theirs.get("median_s"), "speed-up": common.ratio(theirs.get("median_s"),
                                                                           ours.get("median_s")),
                 "cnnjax forwards": forwards[name], "compile s": compiles[name],
                 "error": ours.get("error") or theirs.get("error")})

  if args.methods and "gradcam" not in args.methods:
    return
  # Ten classes in one (B, 10) call against ten single-class calls, batch 128.
  images = jnp.asarray(np.random.default_rng(3).normal(size=(128, 32, 32, 3)).astype(np.float32))
  every = jnp.tile(jnp.arange(10), (128, 1))
  ten, _, ten_forwards = _cnnjax(explain.gradcam, model, variables, images, every)
  one, _, one_forwards = _cnnjax(explain.gradcam, model, variables, images, every[:, 0])
  timed = common.interleave({"ten": ten, "single x 10": lambda: [one() for _ in range(10)]},
                            repeats=args.repeats, target_seconds=args.target, log=print)
  rows.append({"model": "resnet20", "batch": 128, "method": "gradcam (B, 10) vs 10 x (B,)",
               "cnnjax s": timed["ten"].get("median_s"), "peer s": timed["single x 10"].get("median_s"),
               "speed-up": common.ratio(timed["single x 10"].get("median_s"), timed["ten"].get("median_s")),
               "cnnjax forwards": ten_forwards, "compile s": None,
               "error": f"(B, 10) / (10 x (B,)) time {common.ratio(timed['ten'].get('median_s'), timed['single x 10'].get('median_s')):.3f}, FLOPs {ten_forwards / (10 * one_forwards):.3f}"})


def section_resnet50(args, rows):
  with tempfile.TemporaryDirectory() as workdir:
    torch_model, model, variables = peers.resnet50_pair(workdir)
  batch = args.resnet50_batch
  images = np.random.default_rng(4).normal(size=(batch, 224, 224, 3)).astype(np.float32)
  targets = np.random.default_rng(4).integers(0, 1000, batch)
  x = peers.nchw(images)
  layer, layer_path = peers.RESNET50_LAYER
  for name, function, kind in (("scorecam", explain.scorecam, "ScoreCAM"),
                               ("ablationcam", explain.ablationcam, "AblationCAM")):
    if args.methods and not name.startswith(tuple(args.methods)):
      continue
    call, compile_s, forwards = _cnnjax(function, model, variables, jnp.asarray(images), jnp.asarray(targets),
                                        layer=layer)
    if args.peer_per_image:
      # pytorch-grad-cam's ScoreCAM scores one image's masked copies after another, but first builds every
      # image's (2048, 3, 224, 224) copies at once (1.2 GB an image; at batch 8 it was OOM-killed at 24 GB), so
      # one image per call is the same arithmetic in less memory.
      singles = [_grad_cam(kind, torch_model, layer_path, x[i:i + 1], targets[i:i + 1]) for i in range(batch)]

      def peer(singles=singles):
        return [single() for single in singles]
    else:
      peer = _grad_cam(kind, torch_model, layer_path, x, targets)
    seconds = {}
    for framework, run in (("cnnjax", call), ("peer", peer)):  # one run each: minutes per call
      started = time.perf_counter()
      common.block(run())
      seconds[framework] = time.perf_counter() - started
      print(f"  resnet50 {name} {framework}: {seconds[framework]:.1f} s")
    rows.append({"model": "resnet50 224px", "batch": batch, "method": name, "cnnjax s": seconds["cnnjax"],
                 "peer s": seconds["peer"], "speed-up": seconds["peer"] / seconds["cnnjax"],
                 "cnnjax forwards": forwards, "compile s": compile_s,
                 "error": "peer one image per call" if args.peer_per_image else None})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="resnet20 only")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--target", type=float, default=1.0, help="seconds per timed repeat")
  parser.add_argument("--resnet50-batch", type=int, default=1)
  parser.add_argument("--peer-per-image", action="store_true",
                      help="ResNet50 rows: call the peer once per image (same arithmetic; pytorch-grad-cam's "
                      "ScoreCAM holds 1.2 GB of masked copies per image at once)")
  parser.add_argument("--models", default="resnet20,resnet50", help="which sections run (--quick: resnet20 only)")
  parser.add_argument("--methods", help="comma-separated rows to run (the start of their names; 'gradcam' for "
                      "resnet20's (B, 10) row); default all")
  parser.add_argument("--out", help="result files' stem (default: bench/results/<date>-explain-peers and the rows run)")
  args = parser.parse_args()
  args.methods = args.methods.split(",") if args.methods else None
  torch.set_num_threads(max(1, torch.get_num_threads()))
  onednn.available()  # 'auto' takes oneDNN for the shapes of xla_cpu.ONEDNN_WINS where the library is built
  rows = []
  models = args.models.split(",")
  if "resnet20" in models:
    section_resnet20(args, rows)
  if "resnet50" in models and not args.quick:
    section_resnet50(args, rows)
  columns = ["model", "batch", "method", "cnnjax s", "peer s", "speed-up", "cnnjax forwards", "compile s", "error"]
  common.print_report(rows, columns)
  stem = HERE / "results" / (f"{datetime.date.today().isoformat()}-explain-peers{'-quick' if args.quick else ''}"
                             f"{'-' + '-'.join(args.methods) if args.methods else ''}"
                             f"{'' if 'resnet20' in models else f'-resnet50-b{args.resnet50_batch}'}"
                             f"{'-per-image' if args.peer_per_image else ''}")
  stem = Path(args.out) if args.out else stem
  environment = {**common.environment(), "onednn": onednn.version()}  # None: XLA's kernels alone
  stem.with_suffix(".json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=1,
                                                  default=float))
  stem.with_suffix(".md").write_text(common.markdown(rows, columns) + "\n")


if __name__ == "__main__":
  main()
