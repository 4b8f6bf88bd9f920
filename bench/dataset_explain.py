"""Throughput of whole-dataset explanations (cnnjax.apps.dataset) on 1, 2 and 4 devices: the shipped resnet20 with
saliency and Grad-CAM (plus their deletion/insertion AUCs, the job's default metric) on a CIFAR-10 subset.

  python bench/dataset_explain.py [--per_class 40] [--batch_size 64] [--devices 1,2,4] [--metrics deletion_insertion]

Each device count runs in its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N: on a CPU machine
these are virtual devices sharing its cores), into a fresh output directory. Images/s are counted after the first
chunk, which includes compilation; the end-to-end figure is given too.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10_jpeg" / "train.zip"
WEIGHTS = REPO.parent / "shared" / "weights" / "resnet_cifar" / "resnet20-12fca82f.npz"

_JOB = """
import json, sys, time
sys.path.insert(0, {repo!r})
import jax
from cnnjax.apps import dataset, report
started = time.perf_counter()
result = dataset.explain_dataset(report.load_weights({weights!r}), "folder:{data}", methods=["saliency", "gradcam"],
                                 out_dir={out!r}, batch_size={batch_size}, metrics={metrics!r},
                                 limit_per_class={per_class}, print_fn=lambda line: None)
seconds = result["chunk_seconds"]
print(json.dumps({{"devices": jax.device_count(), "images": result["summary"]["images"],
                  "first_chunk_s": seconds[0], "steady_s": sum(seconds[1:]), "job_s": time.perf_counter() - started,
                  "chunks": len(seconds)}}))
"""


def measure(devices: int, args) -> dict:
  with tempfile.TemporaryDirectory() as out:
    code = _JOB.format(repo=str(REPO), weights=str(WEIGHTS), data=str(DATA), out=out, batch_size=args.batch_size,
                       metrics=args.metrics.split(","), per_class=args.per_class)
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
  row = json.loads(done.stdout.strip().splitlines()[-1])
  steady_images = row["images"] - args.batch_size
  row["steady_images_per_s"] = steady_images / row["steady_s"]
  row["job_images_per_s"] = row["images"] / row["job_s"]
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per_class", type=int, default=40)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--devices", default="1,2,4")
  parser.add_argument("--metrics", default="deletion_insertion")
  args = parser.parse_args()
  rows = [measure(int(devices), args) for devices in args.devices.split(",")]
  base = rows[0]["steady_images_per_s"]
  print("| devices | images | chunks | first chunk s | steady images/s | vs first row | end-to-end images/s |")
  print("|---|---|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['devices']} | {row['images']} | {row['chunks']} | {row['first_chunk_s']:.1f} | "
          f"{row['steady_images_per_s']:.1f} | {row['steady_images_per_s'] / base:.2f} | {row['job_images_per_s']:.1f} |")


if __name__ == "__main__":
  main()
