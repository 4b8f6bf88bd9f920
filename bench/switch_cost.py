"""Why common.interleave starts each contender's round with an untimed call: the first training steps right
after a switch of framework, timed one by one (cnnjax x3, torch eager x3, repeated).

  python bench/switch_cost.py [--model resnet50] [--rounds 3]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import run  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50", choices=sorted(run.TRAIN_ROWS))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  size, batch, classes, options = run.TRAIN_ROWS[args.model]
  info = {}
  calls = {"cnnjax": run.cnnjax_train(args.model, size, batch, classes, options, info, "cnnjax"),
           "torch eager": run.torch_train(args.model, size, batch, classes, False, info)}
  for call in calls.values():  # compile / warm up
    common.block(call())
    common.block(call())
  rows = []
  for round_index in range(args.rounds):
    for name, call in calls.items():
      speeds = []
      for _ in range(args.steps):
        started = time.perf_counter()
        common.block(call())
        speeds.append(batch / (time.perf_counter() - started))
      rows.append({"round": round_index + 1, "framework": name,
                   **{f"step {index + 1} images/s": speed for index, speed in enumerate(speeds)},
                   "step 1 / median of the rest": speeds[0] / statistics.median(speeds[1:])})
  common.print_report(rows)


if __name__ == "__main__":
  main()
