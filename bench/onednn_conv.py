"""oneDNN's convolutions behind XLA's FFI (cnnjax.models.onednn) against XLA:CPU with cnnjax's work-arounds and
against PyTorch (its oneDNN), side by side in one process (issue 18):

  convolutions  per shape of simple_cnn and resnet20 (batch 128, 32px), vgg16 (batch 64, 32px) and ResNet50
                (batch 16, 224px), bench/conv_breakdown.py's: forward, input gradient (backward-data) and kernel
                gradient (backward-weights), ms per call.
  train         one Adam step of bench/run.py's training rows (simple_cnn, resnet20 at batch 128 and vgg16 at 64,
                32px; resnet50 at 16, 224px): cnnjax with oneDNN disabled (XLA's kernels), on 'onednn' (oneDNN
                for every convolution), on 'auto' (xla_cpu.ONEDNN_WINS: oneDNN per shape and op), PyTorch eager (at 1 thread and at every core, see TORCH_THREADS), torch.compile.

  python bench/onednn_conv.py [--sections convolutions,train] [--models ...] [--torch_compile] [--repeats 3]
                             [--out bench/results/NAME]
  python bench/onednn_conv.py --table_from NAME.json ...   # prints xla_cpu.ONEDNN_WINS from the per-shape rows

Builds the library first if it is not built. Prints Markdown tables (and writes NAME.md / NAME.json with the
machine, versions, date and load average when --out is given).
"""
import argparse
import functools
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import conv_breakdown  # noqa: E402  (the layer shapes and PyTorch's calls)
import peers_torch  # noqa: E402  (the same architectures in PyTorch)

from cnnjax import models  # noqa: E402  (sets cnnjax's XLA_FLAGS before JAX starts its CPU client)
from cnnjax.models import onednn, xla_cpu  # noqa: E402
from cnnjax.train import step as step_lib  # noqa: E402

SHAPES = conv_breakdown.SHAPES  # (count in the model, batch, H, W, C_in, C_out, kernel, stride) per model
TRAIN_ROWS = common.TRAIN_ROWS  # name: (size, batch, classes, cnnjax options)
# contender -> (CNNJAX_KERNELS path, work-arounds disabled): XLA alone, oneDNN for all, 'auto' with its table
PATHS = {"xla": ("auto", ("onednn",)), "onednn": ("onednn", ()), "auto": ("auto", ())}
CONV_CONTENDERS = ("xla", "onednn")  # per shape the table is what is measured, so 'auto' is not timed there
OPS = ("forward", "grad input", "grad kernel")


def cnnjax_conv_ops(contender: str, batch, height, width, c_in, c_out, kernel, stride, pad=None):
  """{op: call} of cnnjax's own convolution (`xla_cpu.conv`, as the layers call it) compiled as `contender`, with
  the inputs conv_breakdown gives PyTorch (symmetric padding, kernel // 2 unless given)."""
  rng = np.random.default_rng(0)
  pad = kernel // 2 if pad is None else pad
  x = jnp.asarray(rng.standard_normal((batch, height, width, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, c_out)) * 0.05, jnp.float32)
  conv = lambda x, w: xla_cpu.conv(x, w, (stride, stride), ((pad, pad), (pad, pad)))
  dy = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, x, w).shape), jnp.float32)
  functions = {"forward": lambda x, w, dy: conv(x, w),
               "grad input": lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
               "grad kernel": lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]}
  path, disable = PATHS[contender]
  with xla_cpu.kernels(path, disable=disable):
    compiled = {op: jax.jit(function).lower(x, w, dy).compile() for op, function in functions.items()}
  return {op: functools.partial(call, x, w, dy) for op, call in compiled.items()}


# PyTorch's OpenMP pool at 1 thread and at every core: on a shared 2-core machine (load average above the core
# count) its 2-thread convolutions ran 3-5x slower than 1 thread (static OpenMP chunks wait for a descheduled
# thread), so each op is timed both ways and the faster is PyTorch's figure ("torch ms").
TORCH_THREADS = (1, os.cpu_count())


def with_torch_threads(threads: int, call):
  def run():
    torch.set_num_threads(threads)
    return call()
  return run


def section_convolutions(args) -> list:
  rows, totals = [], {}
  for model in args.models:
    for count, *shape in SHAPES[model]:
      flops, torch_ops = conv_breakdown.conv_ops(*shape)
      ours = {contender: cnnjax_conv_ops(contender, *shape) for contender in CONV_CONTENDERS}
      calls = {(op, contender): ours[contender][op] for op in OPS for contender in ours}
      calls.update({(op, f"torch {threads}t"): with_torch_threads(threads, torch_ops[op][1])
                    for op in OPS for threads in TORCH_THREADS})
      timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target)
      for op in OPS:
        ms = {contender: timed[(op, contender)]["median_s"] * 1e3 for contender in ours}
        ms["torch"] = min(timed[(op, f"torch {threads}t")]["median_s"] * 1e3 for threads in TORCH_THREADS)
        rows.append({"model": model, "shape N x H x W x Cin x Cout k/s": "x".join(map(str, shape[:5]))
                     + f" k{shape[5]}/{shape[6]}" + (f" p{shape[7]}" if len(shape) > 7 else ""), "count": count, "op": op,
                     "xla ms": ms["xla"], "onednn ms": ms["onednn"], "torch ms": ms["torch"],
                     **{f"torch {t}t ms": timed[(op, f"torch {t}t")]["median_s"] * 1e3 for t in TORCH_THREADS},
                     "onednn / xla speed": ms["xla"] / ms["onednn"],
                     "onednn / torch speed": ms["torch"] / ms["onednn"],
                     "onednn GFLOP/s": flops / ms["onednn"] / 1e6})
        total = totals.setdefault((model, op), {"xla": 0.0, "onednn": 0.0, "torch": 0.0})
        for contender, value in ms.items():
          total[contender] += count * value
      print(common.markdown(rows[-3:], list(rows[-1])), flush=True)
  for (model, op), total in totals.items():
    rows.append({"model": model, "shape N x H x W x Cin x Cout k/s": "total (weighted by count)", "op": op,
                 "xla ms": total["xla"], "onednn ms": total["onednn"], "torch ms": total["torch"],
                 "onednn / xla speed": total["xla"] / total["onednn"],
                 "onednn / torch speed": total["torch"] / total["onednn"]})
  return rows


def cnnjax_train(name: str, size: int, batch: int, classes: int, options: dict, contender: str):
  """One Adam step of cnnjax's train_step (donated state), compiled as `contender` (PATHS)."""
  model = models.create(name, num_classes=classes, **options)
  state = step_lib.create_train_state(model, optax.adam(1e-3), (size, size, 3), seed=0)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, num_classes=classes,
                                   preprocess={"mode": "rescale"}), donate_argnums=0)
  rng = np.random.default_rng(0)
  inputs = {"images": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), np.uint8)),
            "labels": jnp.asarray(rng.integers(0, classes, batch))}
  path, disable = PATHS[contender]
  with xla_cpu.kernels(path, disable=disable):
    compiled = step.lower(state, inputs).compile()
  cell = {"state": state}

  def call():
    cell["state"], metrics = compiled(cell["state"], inputs)
    return cell["state"], metrics
  return call


def torch_train(name: str, size: int, batch: int, classes: int, compiled: bool = False):
  """One Adam step of the same architecture in PyTorch (bench/peers_torch.py), eager or torch.compile'd."""
  torch.manual_seed(0)
  model = peers_torch.BUILDERS[name](classes, **({"conv_bias": True} if name == "resnet50" else {})).train()
  forward = torch.compile(model) if compiled else model
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size)).astype(np.float32) / 255.0)
  y = torch.from_numpy(rng.integers(0, classes, batch)).long()

  def call():
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(forward(x), y).backward()
    optimizer.step()
  return call


def section_train(args) -> list:
  rows = []
  for name in args.models:
    if name not in TRAIN_ROWS:
      continue
    size, batch, classes, options = TRAIN_ROWS[name]
    calls = {f"cnnjax {contender}": cnnjax_train(name, size, batch, classes, options, contender)
             for contender in PATHS}
    calls.update({f"torch eager {threads}t": with_torch_threads(threads, torch_train(name, size, batch, classes))
                  for threads in TORCH_THREADS})
    if args.torch_compile:
      calls["torch.compile"] = with_torch_threads(os.cpu_count(), torch_train(name, size, batch, classes, True))
    timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target)
    speeds = {framework: common.images_per_second(result, batch) for framework, result in timed.items()}
    fastest_torch = max(speed for framework, speed in speeds.items() if framework.startswith("torch"))
    for framework, speed in speeds.items():
      rows.append({"model": name, "batch": batch, "framework": framework, "images/s": speed,
                   "/ fastest torch": speed / fastest_torch, "/ cnnjax xla": speed / speeds["cnnjax xla"]})
    print(common.markdown(rows[-len(speeds):], list(rows[-1])), flush=True)
  return rows


TABLE_THRESHOLD = 1.05  # oneDNN takes an op measured at least this much faster than XLA (run-to-run noise ~3%)
OP_NAMES = {"forward": "forward", "grad input": "input_gradient", "grad kernel": "kernel_gradient"}


def wins_table(paths) -> str:
  """xla_cpu.ONEDNN_WINS's entries, as Python source, from the 'convolutions' rows of these OUT.json files (a
  model's rows from the first file that has it: a later run of a model replaces an earlier one)."""
  entries = {}  # (H, W, C_in, C_out, kh, kw, sh, sw) -> (model, ops)
  taken = set()  # models whose rows an earlier file gave
  for path in paths:
    rows = json.loads(Path(path).read_text())["convolutions"]
    for row in rows:
      shape = row["shape N x H x W x Cin x Cout k/s"]
      if shape.startswith("total") or row["model"] in taken:
        continue
      dims, window = shape.split(" ")[:2]
      _, height, width, c_in, c_out = map(int, dims.split("x"))
      kernel, stride = map(int, window[1:].split("/"))
      _, ops = entries.setdefault((height, width, c_in, c_out, kernel, kernel, stride, stride), (row["model"], set()))
      if row["onednn / xla speed"] >= TABLE_THRESHOLD:
        ops.add(OP_NAMES[row["op"]])
    taken |= {row["model"] for row in rows}
  lines, model = [], None
  for key, (row_model, ops) in entries.items():
    if row_model != model:
      lines.append(f"    # {row_model}")
      model = row_model
    ops = tuple(op for op in onednn.OPS if op in ops)
    if not ops:
      lines.append(f"    # {key}: XLA's for all three")
    else:
      lines.append(f"    {key}: {'_ALL' if ops == onednn.OPS else ops},")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sections", default="convolutions,train")
  parser.add_argument("--models", default="simple_cnn,resnet20,vgg16,resnet50")
  parser.add_argument("--torch_compile", action="store_true", help="add torch.compile to the training rows")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--target", type=float, default=0.3, help="seconds per timed repeat")
  parser.add_argument("--out", help="write OUT.md and OUT.json")
  parser.add_argument("--table_from", nargs="+", help="print xla_cpu.ONEDNN_WINS from these OUT.json files")
  args = parser.parse_args()
  if args.table_from:
    print(wins_table(args.table_from))
    return
  args.models = args.models.split(",")
  onednn.build()
  if not onednn.available(explicitly_asked=True):
    raise SystemExit("the oneDNN library did not load")
  environment = {**common.environment(), "onednn": onednn.version(), "onednn threads": onednn.threads()}
  print(json.dumps(environment), flush=True)
  sections = {}
  for section in args.sections.split(","):
    sections[section] = {"convolutions": section_convolutions, "train": section_train}[section](args)
  environment["load_average_after"] = os.getloadavg()
  if args.out:
    text = "\n\n".join(f"### {name}\n\n" + common.markdown(rows, list(rows[0])) for name, rows in sections.items())
    Path(args.out + ".md").write_text(f"`{' '.join(sys.argv)}`\n\n{json.dumps(environment)}\n\n{text}\n")
    Path(args.out + ".json").write_text(json.dumps({"environment": environment, **sections}, indent=1))


if __name__ == "__main__":
  main()
