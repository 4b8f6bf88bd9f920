"""What a newcomer sees: a first train.py run on a fresh image folder prints no Python warning."""
import os
import re
import subprocess
import sys
from pathlib import Path


from cnnjax.data import sources
from conftest import colour_folder

REPO = Path(__file__).resolve().parents[1]
# How Python prints a warning: "path/to/module.py:66: RuntimeWarning: message".
PYTHON_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ", re.MULTILINE)


def _folder_big_enough_for_threads(root: Path) -> Path:
  """Three classes of noise images, enough of them that decoding runs in its worker threads."""
  return colour_folder(root, per_class=-(-sources._MIN_FILES_FOR_THREADS // 3), size=12)


def test_a_first_train_py_run_prints_no_python_warning(tmp_path):
  folder = _folder_big_enough_for_threads(tmp_path / "colours")
  command = [sys.executable, "train.py", "--config", "configs/simple_cnn.py", "--workdir", str(tmp_path / "run"),
             f"--config.dataset=folder:{folder}", "--config.num_classes=3", "--config.image_size=12",
             "--config.batch_size=32", "--config.num_epochs=1"]
  # An empty cache folder: the run decodes the folder, as a first run does.
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "CNNJAX_CACHE_DIR": str(tmp_path / "cache")})
  assert done.returncode == 0, done.stderr[-2000:]
  assert "epoch 1/1" in done.stdout
  assert "os.fork()" not in done.stderr
  assert not PYTHON_WARNING.search(done.stderr), done.stderr[-2000:]
