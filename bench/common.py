"""What every benchmark shares: the interleaved timer, XLA's FLOP count, the environment record and the
Markdown table writer."""
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata
from typing import Callable, Dict, List, Optional, Sequence

import jax

# The training rows of bench/run.py and bench/onednn_conv.py.
# name: (image size, batch, classes, cnnjax options)
TRAIN_ROWS = {
    "simple_cnn": (32, 128, 10, {}),
    "resnet20": (32, 128, 10, {}),
    "vgg16": (32, 64, 10, {"batch_norm": True, "head": "gap"}),  # configs/vgg16.py's CIFAR VGG16
    "resnet50": (224, 16, 1000, {"stride_on_3x3": True}),  # torchvision's v1.5
}


def block(value):
  """Waits for JAX's asynchronous results (torch and numpy values are already computed)."""
  return jax.block_until_ready(value)


def interleave(calls: Dict[str, Callable[[], object]], *, repeats: int, target_seconds: float,
               max_inner: int = 50, settle: int = 1,
               log: Optional[Callable[[str], None]] = None) -> Dict[str, dict]:
  """Times every call of `calls` side by side: A B C A B C ... so the machine's load hits all of them alike.

  Each call must return only once its work is done (JAX outputs are blocked on here). Per call: the first run
  is the compile / warm-up (`compile_s`), a second untimed run sizes `inner` (runs per timed repeat, so a
  repeat lasts about `target_seconds`), then `repeats` rounds of `settle` untimed and `inner` timed runs;
  `median_s` is the median over rounds of the per-run time. A call that raises gets `error` (its first line)
  instead of timings. The settle runs keep the switch between frameworks out of the figures (a user's steps
  follow each other, not another framework's): on one afternoon the first ResNet50 training step of cnnjax right
  after a PyTorch step ran at 0.65-0.85x its steady speed (bench/switch_cost.py, bench/RESULTS.md).
  """
  results = {}
  for name, call in calls.items():
    try:
      started = time.perf_counter()
      block(call())
      compile_s = time.perf_counter() - started
      started = time.perf_counter()
      block(call())
      warm_s = time.perf_counter() - started
      inner = max(1, min(max_inner, math.ceil(target_seconds / max(warm_s, 1e-6))))
      results[name] = {"compile_s": compile_s, "inner": inner, "runs": []}
    except Exception as error:  # any failure of a peer is recorded, not fatal  # pylint: disable=broad-except
      results[name] = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"}
      if os.environ.get("BENCH_DEBUG"):
        traceback.print_exc()
    if log:
      log(f"  warm-up {name}: {results[name]}")
  for _ in range(repeats):
    for name, call in calls.items():
      result = results[name]
      if "error" in result:
        continue
      for _ in range(settle):
        block(call())
      started = time.perf_counter()
      for _ in range(result["inner"]):
        block(call())
      result["runs"].append((time.perf_counter() - started) / result["inner"])
  for result in results.values():
    if "runs" in result:
      result["median_s"] = statistics.median(result["runs"])
  return results


def flops_of(compiled) -> float:
  """XLA's FLOP count of a compiled computation: exact, and independent of the machine's load."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", float("nan")))


def xla_flops(function, *args) -> float:
  return flops_of(jax.jit(function).lower(*args).compile())


def _version(package: str) -> str:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "not installed"


def environment() -> dict:
  """Machine, versions, date and load: what RESULTS.md records beside every figure."""
  fields = dict(line.split(":", 1) for line in subprocess.run(
      ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines() if ":" in line)
  model = fields.get("Model name", platform.processor() or platform.machine()).strip()
  if "CPU family" in fields:  # a VM's "AMD EPYC" says nothing of the generation (family 25: Zen 4, 26: Zen 5)
    model += f" (family {fields['CPU family'].strip()}, model {fields.get('Model', '?').strip()})"
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "cpu": model, "cores": os.cpu_count(), "load_average": os.getloadavg(),
      "python": platform.python_version(),
      "versions": {package: _version(package) for package in (
          "jax", "jaxlib", "flax", "optax", "torch", "torchvision", "keras", "captum", "grad-cam", "numpy")},
      "jax_backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    if math.isnan(value):
      return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
  return str(value)


def markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
  return "\n".join(lines)


def print_report(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> None:
  """Prints a script's command line, the machine, versions and date, then its rows as a Markdown table."""
  env = environment()
  print(f"# bench/{os.path.basename(sys.argv[0])} {' '.join(sys.argv[1:])}\n\n{env['date']}, {env['cpu']}, "
        f"{env['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "\n")
  print(markdown(rows, columns or list(rows[0])))


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
  if numerator is None or denominator is None or denominator == 0:
    return None
  return numerator / denominator


def images_per_second(result: dict, batch: int) -> Optional[float]:
  return batch / result["median_s"] if "median_s" in result else None


def sections_markdown(sections: Dict[str, List[dict]], columns: Dict[str, Sequence[str]]) -> str:
  return "\n\n".join(f"### {title}\n\n{markdown(rows, columns[title])}" for title, rows in sections.items() if rows)
