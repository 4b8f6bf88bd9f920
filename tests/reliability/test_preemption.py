"""SIGKILL at random moments (a step, a checkpoint write, evaluation) never costs the run its exactness."""
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from cnnjax.train import loop
from cnnjax.train import weights
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
KILL_POINTS = 5


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(image_folder, tmp_path):
  config = tiny_config(image_folder, num_epochs=3, checkpoint_every_steps=1)
  loop.train_and_evaluate(config, str(tmp_path / "reference"))

  workdir = tmp_path / "killed"
  command = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
             f"--config.dataset=folder:{image_folder}", "--config.num_classes=3", "--config.image_size=16",
             "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=3",
             "--config.checkpoint_every_steps=1"]
  chooser = random.Random(0)
  kills = 0
  for _ in range(KILL_POINTS):
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Kill only once the run is training (a checkpoint exists) and at a random moment after that.
    started = time.time()
    while process.poll() is None and not list(workdir.glob("checkpoints/latest/*")) and time.time() - started < 300:
      time.sleep(0.05)
    time.sleep(chooser.uniform(0.0, 4.0))
    if process.poll() is None:
      process.kill()
      kills += 1
    process.wait()
  assert kills >= 3, "the run finished before most kill points: make it longer"

  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  _, expected, _ = weights.restore(str(tmp_path / "reference"))
  _, actual, _ = weights.restore(str(workdir))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(b), np.asarray(a)), expected, actual)
  without_seconds = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                                  for line in path.read_text().splitlines()]
  assert without_seconds(workdir / "metrics.jsonl") == without_seconds(tmp_path / "reference" / "metrics.jsonl")
