"""setuptools' build (pyproject.toml holds the metadata) with one optional step: cnnjax's oneDNN kernels
(cnnjax/models/onednn/conv.cc, issue 18) compiled into the package when the build environment has jax and the
oneDNN wheels, i.e. `pip install --no-build-isolation .` from an environment with `cnnjax[onednn]`. Otherwise
(pip's default isolated build has neither) the step prints why it skipped, the wheel stays pure Python, and
`python -m cnnjax.models.onednn build` compiles the same kernels later; cnnjax runs on XLA's kernels meanwhile.
"""
import functools
import importlib.util
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

ONEDNN_MODULE = Path(__file__).resolve().parent / "cnnjax" / "models" / "onednn" / "__init__.py"


def load_onednn():
  """cnnjax.models.onednn alone, without importing cnnjax (flax, tensorflow, ...): it needs only jax and numpy.

  Raises:
    ImportError: jax or numpy is not in the build environment.
  """
  spec = importlib.util.spec_from_file_location("cnnjax_onednn_at_install", ONEDNN_MODULE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.cache
def onednn_plan():
  """(the loaded cnnjax.models.onednn, None) when this environment can compile the kernels, else (None, why not)."""
  try:
    onednn = load_onednn()
  except ImportError as error:
    return None, f"no {error.name} in the build environment"
  if onednn.install_prefix() is None:
    return None, "no oneDNN in the build environment"
  return onednn, None


def build_onednn(package_dir: Path) -> str:
  """Compiles the kernels into `package_dir` (the built cnnjax/models/onednn) if it can; returns what to say."""
  onednn, why_not = onednn_plan()
  if onednn is not None:
    try:
      return f"cnnjax: compiled oneDNN kernels into {onednn.build(package_dir / onednn.packaged_library())}"
    except onednn.Unavailable as error:
      why_not = str(error)
  return (f"cnnjax: oneDNN kernels skipped ({why_not}); cnnjax uses XLA's until `python -m cnnjax.models.onednn "
          "build` (or install with --no-build-isolation from an environment with cnnjax[onednn])")


class BuildPyWithOneDNN(build_py):
  """build_py, then `build_onednn` into the built package."""

  def run(self):
    super().run()
    print(build_onednn(Path(self.build_lib) / "cnnjax" / "models" / "onednn"), flush=True)


class Distribution(setuptools.Distribution):
  """A platform wheel (it may hold a compiled library) exactly when this environment can compile the kernels."""

  def has_ext_modules(self):
    return onednn_plan()[0] is not None


if __name__ == "__main__":
  setuptools.setup(cmdclass={"build_py": BuildPyWithOneDNN}, distclass=Distribution)
