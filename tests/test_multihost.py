"""Two processes joined by jax.distributed on localhost (CPU collectives) train like one process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from cnnjax.train import weights

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def train_one_and_two_processes(common, workdir):
  """Runs `common` (a train.py command line) once as two processes joined by jax.distributed (one CPU device
  each, workdir/two) and once as one process (workdir/one); returns process 0's stdout after all succeeded."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  address = f"127.0.0.1:{free_port()}"
  processes = [subprocess.Popen(common + ["--workdir", str(workdir / "two"), "--distributed",
                                          f"--coordinator_address={address}", "--num_processes=2",
                                          f"--process_id={index}"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in (1, 0)]
  single = subprocess.run(common + ["--workdir", str(workdir / "one")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-2000:]
  assert single.returncode == 0, single.stderr[-2000:]
  return outputs[1][0]


def assert_same_weights(workdir_a, workdir_b):
  _, expected, _ = weights.restore(str(workdir_a))
  _, actual, _ = weights.restore(str(workdir_b))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5),
                         expected, actual)


def test_two_process_run_matches_one_process_run(image_folder, tmp_path):
  common = [sys.executable, "train.py", "--config", "configs/simple_cnn.py", f"--config.dataset=folder:{image_folder}",
            "--config.num_classes=3", "--config.image_size=16", "--config.batch_size=8",
            "--config.eval_batch_size=8", "--config.num_epochs=1", "--config.steps_per_epoch=3"]
  stdout = train_one_and_two_processes(common, tmp_path)
  assert "epoch 1/1" in stdout  # process 0 reports; both train
  assert_same_weights(tmp_path / "one", tmp_path / "two")
