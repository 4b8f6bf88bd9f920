"""Streaming input on an ImageNet-layout folder (issue 15): the input's images/s beside ResNet50's training step
at 224 px, the peak RSS of a streamed train.py run beside what the in-memory path would hold, and a SIGKILL
mid-epoch + rerun against the uninterrupted run.

  nice -n 19 python bench/make_imagenet_folder.py --out /work/imagenet_like     # the folder (never committed)
  python bench/streaming.py --folder /work/imagenet_like --batch 8 --batches 12 --train_steps 8 --workdir /tmp/s
  # what streaming itself adds: the same run streamed and in memory, on a folder small enough for memory
  nice -n 19 python bench/make_imagenet_folder.py --out /work/imagenet_small --classes 100 --per_class 8
  python bench/streaming.py --phase memory --folder /work/imagenet_small --batch 8 --workdir /tmp/m

Phases, one process each where memory matters:
  1. input: this process's training batches of epoch 0 (decode + resize to 224 on grain's threads), images/s;
     step: configs/resnet50_imagenet.py's jitted train step (float32: XLA:CPU emulates bfloat16) on one fixed
     batch, images/s; streamed: the step fed by the reader, as train.py runs it, images/s.
  2. train.py on the folder (streamed: its decoded arrays exceed in_memory_limit_gb), its peak RSS (ru_maxrss
     of the child); the same run SIGKILLed after its step-2 checkpoint and rerun: the step `train_steps - 2`
     checkpoints of both compared.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def overrides(folder: str, batch: int, steps: int) -> dict:
  """configs/resnet50_imagenet.py on the folder at a small batch, float32, one short epoch, one validation image per class."""
  return {"dataset": f"folder:{folder}", "batch_size": batch, "eval_batch_size": batch,
          "model_options.dtype": "float32", "steps_per_epoch": steps, "num_epochs": 1, "warmup_epochs": 0.0,
          "validation_split": 0.015, "checkpoint_every_steps": 2}


def throughput(folder: str, batch: int, batches: int) -> dict:
  """Input, step and streamed-step images/s (phase 1)."""
  import jax

  from cnnjax import data
  from cnnjax.train import experiment, loop, sharding, step as step_lib
  from configs import resnet50_imagenet

  config = resnet50_imagenet.get_config()
  for key, value in overrides(folder, batch, batches).items():
    group, _, field = key.rpartition(".")
    (config[group] if group else config)[field] = value
  splits = experiment.load_splits(config)
  assert isinstance(splits.train, data.StreamingSet), "the folder fits in memory: it was not streamed"
  listed = len(splits.train) + len(splits.validation)
  result = {"images": listed, "batch": batch, "in_memory_gb": listed * 224 * 224 * 3 / 1e9}

  reader = data.batches(splits.train, batch_size=batch, seed=config.seed, epoch=0, shuffle=True)
  next(reader)  # starts the threads
  started = time.perf_counter()
  for _ in range(batches):
    next(reader)
  result["input_images_per_s"] = batch * batches / (time.perf_counter() - started)

  model = experiment.create_model(config)
  task = loop.image_task(config, model, splits)
  mesh = sharding.data_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.device_put(step_lib.create_train_state(model, task.tx, task.input_shape, config.seed), replicated)
  train_step, _ = loop.jitted_steps(config, task, replicated, batch_sharding)
  fixed = sharding.global_batch(next(reader), batch_sharding)
  state, metrics = train_step(state, fixed)  # compiles
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(batches):
    state, metrics = train_step(state, fixed)
  jax.block_until_ready(metrics)
  result["step_images_per_s"] = batch * batches / (time.perf_counter() - started)
  started = time.perf_counter()
  for _ in range(batches):
    state, metrics = train_step(state, sharding.global_batch(next(reader), batch_sharding))
  jax.block_until_ready(metrics)
  result["streamed_step_images_per_s"] = batch * batches / (time.perf_counter() - started)
  return result


def train_py(workdir: str, folder: str, batch: int, steps: int, kill_after: int = 0, **fields) -> dict:
  """Runs train.py (SIGKILLed once a checkpoint of step >= kill_after exists, if given; `fields` are more config
  overrides); its seconds, rc and its own peak RSS (the child's ru_maxrss, from wait4)."""
  command = [sys.executable, "train.py", "--config", "configs/resnet50_imagenet.py", "--workdir", workdir,
             *(f"--config.{key}={value}" for key, value in {**overrides(folder, batch, steps), **fields}.items())]
  started = time.time()
  latest = Path(workdir) / "checkpoints" / "latest"
  with tempfile.TemporaryFile("w+") as output:  # a file, not a pipe: nobody reads a pipe while we poll
    process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True)
    while True:
      pid, status, usage = os.wait4(process.pid, os.WNOHANG)
      if pid:
        break
      if kill_after and latest.is_dir() and any(d.name.isdigit() and int(d.name) >= kill_after
                                                for d in latest.iterdir()):
        process.send_signal(signal.SIGKILL)
        _, status, usage = os.wait4(process.pid, 0)
        break
      time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)
    output.seek(0)
    tail = output.read()[-600:]
  return {"seconds": time.time() - started, "rc": process.returncode, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
          "tail": tail}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folder", default="/work/imagenet_like")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=12)
  parser.add_argument("--train_steps", type=int, default=8)
  parser.add_argument("--workdir", default="/tmp/streaming-bench")
  parser.add_argument("--phase", choices=("all", "throughput", "train", "memory"), default="all")
  args = parser.parse_args()
  if args.phase == "throughput":
    print(json.dumps(throughput(args.folder, args.batch, args.batches)))
    return
  last = args.train_steps - 2
  if args.phase == "memory":  # the same run streamed and in memory: what streaming itself adds to the peak RSS
    import common
    runs = {name: train_py(os.path.join(args.workdir, name), args.folder, args.batch, args.train_steps,
                           kill_after=last, in_memory_limit_gb=limit, validation_split=0.25,  # 2 per class of 8
                           num_classes=sum(entry.is_dir() for entry in os.scandir(args.folder)))
            for name, limit in (("streamed", 0.0), ("in_memory", 1000.0))}
    print(json.dumps({**runs, "batch": args.batch, "environment": common.environment()}, indent=2))
    return
  results = {}
  if args.phase == "all":  # in a child process: phase 2's peak RSS must not include phase 1's
    done = subprocess.run([sys.executable, __file__, "--phase", "throughput", "--folder", args.folder,
                           "--batch", str(args.batch), "--batches", str(args.batches)],
                          capture_output=True, text=True, check=True)
    results["throughput"] = json.loads(done.stdout.strip().splitlines()[-1])
  # Every run is SIGKILLed once its checkpoint of step `last` (mid-epoch) exists, before the epoch-end evaluation
  # (minutes of ResNet50 inference on 2 cores), so the runs compare their step-`last` checkpoints.
  reference, killed = os.path.join(args.workdir, "reference"), os.path.join(args.workdir, "killed")
  results["reference"] = train_py(reference, args.folder, args.batch, args.train_steps, kill_after=last)
  results["peak_rss_gb"] = results["reference"]["peak_rss_gb"]
  results["killed"] = train_py(killed, args.folder, args.batch, args.train_steps, kill_after=2)
  results["rerun"] = train_py(killed, args.folder, args.batch, args.train_steps, kill_after=last)
  # The largest of the three runs (a resumed run also holds the restored checkpoint).
  results["peak_rss_gb_any_run"] = max(results[run]["peak_rss_gb"] for run in ("reference", "killed", "rerun"))

  import jax
  import numpy as np

  from cnnjax.train import weights
  expected, actual = (weights.restore(path)[1] for path in (reference, killed))
  results["identical_params"] = all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), expected, actual)))
  import common
  results["environment"] = common.environment()
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
