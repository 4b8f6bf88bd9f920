"""The installable package: the wheel `python -m build` makes holds every module of cnnjax and nothing else (but
the oneDNN kernels setup.py compiles where it can),
installs into a fresh virtualenv, imports from another directory, and its console scripts cnnjax-train and
cnnjax-explain are train.py and explain.py (the same flags, `--helpshort` lists them; the checkout's configs,
which import each other as `from configs import ...`, load from any directory).

How the fresh virtualenv gets cnnjax's dependencies without installing them (minutes and GBs of jax, tensorflow,
torch): it is created empty (`python -m venv --without-pip`), the wheel is installed into it with `--no-deps`
(pip run for its interpreter with `--python`), and one .pth file in its site-packages adds this interpreter's
site-packages *after* its own (`site.addsitedir`, so their own .pth files are processed too). What `import cnnjax`
finds there is then the installed wheel and nothing else: this site-packages holds no cnnjax (checked), the
checkout is not on the path (the commands run from an empty temporary directory, without PYTHONPATH), and each
check asserts that the modules it imported come from the virtualenv. A module missing from the wheel therefore
fails to import, and wrong entry points fail the script runs. A virtualenv with --system-site-packages would not
do: it sees the base interpreter's packages, not this virtualenv's. The wheel is built (--no-isolation, with the
setuptools requirements-dev.txt pins as pyproject.toml's build-system does, so no download) from a copy of the
checkout's files (git's tracked and untracked-but-not-ignored ones), so building writes nothing into the checkout.
"""
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cnnjax" / "cli"
SCRIPTS = {"cnnjax-train": ("train.py", CLI / "train.py"), "cnnjax-explain": ("explain.py", CLI / "explain.py")}


def _checkout_files():
  try:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
  except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive): what is there
    skip = {".git", ".venv", "runs", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
    listed = [str(path.relative_to(REPO)) for path in REPO.rglob("*")
              if path.is_file() and not skip & set(path.relative_to(REPO).parts)]
  return [name for name in listed if name and (REPO / name).is_file()]


def _copy_checkout(destination: Path) -> Path:
  for name in _checkout_files():
    (destination / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / name, destination / name)
  return destination


def _defined_flags(source: Path):
  """The flag names a CLI module defines (flags.DEFINE_*("name", ...) and config_flags' --config), with those of
  cnnjax.cli's shared definers (define_distributed_flags) where it calls them."""
  pattern = r"DEFINE_\w+\(\s*\"(\w+)\""
  text = source.read_text()
  names = set(re.findall(pattern, text))
  if "define_distributed_flags(" in text:
    names |= set(re.findall(pattern, (source.parent / "__init__.py").read_text()))
  return sorted(names)


def _run(command, cwd, env=None, timeout=120):
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env():
  env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
  env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(virtualenv folder, its python, the wheel) with the wheel built from a copy of the checkout installed."""
  root = tmp_path_factory.mktemp("package")
  source = _copy_checkout(root / "source")
  built = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"),
                str(source)], cwd=root)
  assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
  wheel, = (root / "dist").glob("cnnjax-*.whl")

  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            cwd=root).stdout.strip())
  ours = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
  for directory in ours:
    assert not (Path(directory) / "cnnjax").exists(), f"{directory} holds a cnnjax: the test would prove nothing"
  (site_packages / "cnnjax_test_dependencies.pth").write_text(
      "".join(f"import site; site.addsitedir({directory!r})\n" for directory in ours))
  install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                  "--disable-pip-version-check", "--quiet", str(wheel)], cwd=root)
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return venv, python, wheel, elsewhere


def test_pyproject_pins_are_the_requirements_files():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

  def pins(name):
    lines = [line.split("#", 1)[0].strip() for line in (REPO / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]
  assert project["dependencies"] == pins("requirements.txt")
  assert project["optional-dependencies"]["peers"] == pins("requirements-peers.txt")
  assert project["optional-dependencies"]["dev"] == ["cnnjax[peers]", *pins("requirements-dev.txt")]
  build_system = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
  assert set(build_system["requires"]) <= set(pins("requirements-dev.txt"))  # the --no-isolation build's backend
  assert project["scripts"] == {"cnnjax-train": "cnnjax.cli.train:run", "cnnjax-explain": "cnnjax.cli.explain:run"}


def test_the_wheel_holds_every_module_of_cnnjax_and_nothing_else(installed):
  _, _, wheel, _ = installed
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
  modules = {name for name in _checkout_files() if name.startswith("cnnjax/") and name.endswith(".py")}
  assert modules and modules <= set(names), sorted(modules - set(names))
  assert {name.split("/")[0] for name in names} == {"cnnjax", "-".join(wheel.name.split("-")[:2]) + ".dist-info"}
  assert "cnnjax-train = cnnjax.cli.train:run" in entry_points
  assert "cnnjax-explain = cnnjax.cli.explain:run" in entry_points


def test_a_build_with_jax_and_onednn_compiles_the_kernels_into_a_platform_wheel_that_loads_them(installed):
  """requirements-dev.txt has oneDNN and the build is --no-isolation, so setup.py's step compiles conv.cc into the
  package; the installed cnnjax then runs on that library (no build, no cache folder)."""
  venv, python, wheel, elsewhere = installed
  with zipfile.ZipFile(wheel) as archive:
    libraries = [name for name in archive.namelist() if name.endswith(".so")]
  assert len(libraries) == 1 and libraries[0].startswith("cnnjax/models/onednn/built/libcnnjax_onednn-")
  assert "-py3-none-any" not in wheel.name, wheel.name  # a compiled library makes it a platform wheel
  check = "from cnnjax.models import onednn; assert onednn.available(); print(onednn._library._name)"
  env = {**_clean_env(), "CNNJAX_CACHE_DIR": str(elsewhere / "no_cache_here")}
  result = _run([str(python), "-c", check], cwd=elsewhere, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert Path(result.stdout.strip()).is_relative_to(venv) and not (elsewhere / "no_cache_here").exists()


def test_a_build_without_jax_or_onednn_skips_the_kernels_with_a_message(monkeypatch, tmp_path):
  """pip's default isolated build has neither: setup.py says why and what to run, writes nothing, and the wheel
  stays pure Python."""
  monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` fails, as in an isolated build environment
  setup = runpy.run_path(str(REPO / "setup.py"), run_name="setup")
  said = setup["build_onednn"](tmp_path / "onednn")
  assert said.startswith("cnnjax: oneDNN kernels skipped (no jax in the build environment)"), said
  assert "python -m cnnjax.models.onednn build" in said and "\n" not in said
  assert not (tmp_path / "onednn").exists()
  assert not setup["Distribution"]().has_ext_modules()


def test_installed_cnnjax_imports_from_another_directory(installed):
  venv, python, _, elsewhere = installed
  # Every module but the two CLIs (each defines its flags in absl's global FLAGS: the scripts test them).
  check = """
import importlib, importlib.metadata, pkgutil, sys
import cnnjax
names = [m.name for m in pkgutil.walk_packages(cnnjax.__path__, 'cnnjax.') if not m.name.startswith('cnnjax.cli.')]
for name in names:
  importlib.import_module(name)
outside = [name for name, module in sys.modules.items() if name.split('.')[0] == 'cnnjax'
           and not (getattr(module, '__file__', '') or '').startswith(sys.prefix)]
assert not outside, outside
import cnnjax.models
assert 'resnet50' in cnnjax.models.names()
print(importlib.metadata.version('cnnjax'), cnnjax.__version__, len(names), cnnjax.__file__)
"""
  result = _run([str(python), "-c", check], cwd=elsewhere, env=_clean_env())
  assert result.returncode == 0, result.stderr[-3000:]
  version, module_version, count, path = result.stdout.split()
  assert version == module_version and int(count) > 40
  assert Path(path).is_relative_to(venv)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_take_the_flags_of_the_checkout_scripts(installed, script):
  venv, _, _, elsewhere = installed
  checkout_script, cli_module = SCRIPTS[script]
  flags = _defined_flags(cli_module)
  assert "workdir" in flags and len(flags) >= 6
  installed_help = _run([str(venv / "bin" / script), "--helpshort"], cwd=elsewhere, env=_clean_env())
  checkout_help = _run([sys.executable, checkout_script, "--helpshort"], cwd=REPO, env=_clean_env())
  for result in (installed_help, checkout_help):
    listed = sorted(set(re.findall(r"^  --(?:\[no\])?(\w+):", result.stdout, re.MULTILINE)))
    assert listed == flags, result.stdout + result.stderr[-2000:]


def test_cnnjax_train_loads_the_checkouts_configs_from_anywhere(installed, tmp_path):
  """simple_cnn_bn.py imports simple_cnn.py, which imports default.py (`from configs import ...`): loaded by the
  installed script from another directory, the run gets as far as the dataset, which is not there."""
  venv, _, _, elsewhere = installed
  missing = tmp_path / "no_such_folder"
  result = _run([str(venv / "bin" / "cnnjax-train"), "--config", str(REPO / "configs" / "simple_cnn_bn.py"),
                 "--workdir", str(tmp_path / "run"), f"--config.dataset=folder:{missing}"],
                cwd=elsewhere, env=_clean_env())
  assert result.returncode == 1, result.stdout + result.stderr
  assert result.stderr.strip().splitlines()[-1] == (f"error: folder:{missing} does not exist; give an existing "
                                                    "directory or .zip of class subfolders")
  typo = _run([str(venv / "bin" / "cnnjax-train"), "--config", str(REPO / "configs" / "vgg16.py"),
               "--workdir", str(tmp_path / "run"), "--config.lerning_rate=0.1"], cwd=elsewhere, env=_clean_env())
  assert "error: --config.lerning_rate: the config has no field 'lerning_rate'" in typo.stderr


def test_config_import_root_is_the_folder_above_the_outermost_package(tmp_path):
  from cnnjax import cli
  nested = tmp_path / "project" / "configs" / "imagenet"
  nested.mkdir(parents=True)
  for folder in (nested, nested.parent):
    (folder / "__init__.py").write_text("")
  (nested / "big.py").write_text("")
  (tmp_path / "loose.py").write_text("")
  assert cli.config_import_root(str(nested / "big.py")) == str(tmp_path / "project")
  assert cli.config_import_root(f"{nested / 'big.py'}:small") == str(tmp_path / "project")
  assert cli.config_import_root(str(tmp_path / "loose.py")) is None
  assert cli.config_import_root(str(tmp_path / "missing.py")) is None
  assert cli.config_import_root(str(REPO / "configs" / "vgg16.py")) == str(REPO)
