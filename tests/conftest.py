"""Test set-up: four virtual CPU devices (so sharded and pmap paths run for real) and the shared data."""
import os
import sys
from pathlib import Path

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))  # configs/ is imported as a package, as train.py does

try:  # the test peers' torch, imported before JAX starts its threads: importing torchvision (and triton with it) late
  import torch  # noqa: E402,F401  # in a worker that had run the web page's tests once crashed it with SIGSEGV
  import torchvision  # noqa: E402,F401
except ImportError:  # requirements-peers.txt not installed: the peer tests skip
  pass
import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build many small runs whose steps compile to the same programs: reuse them across runs.
jax.config.update("jax_compilation_cache_dir", str(Path(os.environ.get("TMPDIR", "/tmp")) / "cnnjax-test-xla-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def xla_kernels_outside_the_onednn_tests(request):
  """Every test but tests/test_onednn.py's traces with XLA:CPU's kernels: once that module has built and loaded
  the oneDNN library in a worker, 'auto' would give oneDNN the convolutions of its table in whichever tests the
  worker ran next, so programs and last digits would depend on the order xdist runs them in. (It builds the
  library in a folder of its own, so train.py's subprocesses do not find it either.)"""
  if request.module.__name__ == "test_onednn":
    yield
    return
  from cnnjax.models import xla_cpu
  with xla_cpu.kernels(disable="onednn"):
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
  if not (SHARED / "data").is_dir():
    pytest.skip(f"../shared is not beside the checkout ({SHARED}); it holds the real data and weights")
  return SHARED


def colour_folder(root: Path, per_class=16, size: int = 20, seed: int = 0, name: str = "{}.png",
                  **save_options) -> Path:
  """Writes a class-per-subfolder dataset a CNN can learn in seconds under `root`: blue, green and red dominated
  noise images, `per_class` of each (or a count per class in that order), files named name.format(index)."""
  import numpy as np
  from PIL import Image
  counts = [per_class] * 3 if isinstance(per_class, int) else list(per_class)
  rng = np.random.default_rng(seed)
  for label, (colour, count) in enumerate(zip(["blue", "green", "red"], counts)):
    (root / colour).mkdir(parents=True)
    for index in range(count):
      pixels = rng.integers(0, 120, size=(size, size, 3))
      pixels[..., 2 - label] += 120
      Image.fromarray(pixels.astype(np.uint8)).save(root / colour / name.format(index), **save_options)
  return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
  """16 PNGs per class of `colour_folder`, 20x20."""
  return colour_folder(tmp_path_factory.mktemp("folder"))


def tiny_config(image_folder, **overrides):
  """The default config on the `image_folder` data: 3 classes at 16x16, batches of 8 (divisible by the 4
  devices), then `overrides`."""
  from cnnjax.train import config as config_lib
  config = config_lib.default_config()
  config.update(dataset=f"folder:{image_folder}", num_classes=3, image_size=16, batch_size=8, eval_batch_size=8)
  for key, value in overrides.items():
    config[key] = value
  return config


def one_line_error(call, *fragments):
  """Asserts `call()` raises a one-line ValueError holding every fragment; returns the message."""
  with pytest.raises(ValueError) as error:
    call()
  message = str(error.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message
  return message
