"""The command-line programs: `cnnjax.cli.train` (train.py, console script `cnnjax-train`) and `cnnjax.cli.explain`
(explain.py, `cnnjax-explain`).

Each module defines its absl flags when it is imported, in absl's global FLAGS: import only the one you run (this
package imports neither). `run()` is the entry point; train.py and explain.py at the top of the checkout call it, and
so do the console scripts `pip install` makes, so both take the same flags.
"""
import os
import platform
import sys
from typing import Optional

from absl import flags

# glibc's malloc hands XLA:CPU's large per-step buffers to mmap and back every step, so each step faults their pages
# in again, 4 kB at a time: a quarter of a CPU training run's time went to the kernel (bench/RESULTS.md, "Huge
# pages"). With this tunable glibc asks for transparent huge pages on those mappings (2 MB a fault).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_HUGE_PAGES_GLIBC = (2, 35)  # the first glibc that knows the tunable


def huge_pages_supported() -> bool:
  """Whether glibc can put malloc's mappings on transparent huge pages here: Linux, glibc >= 2.35, THP not 'never'."""
  libc, version = platform.libc_ver()
  if sys.platform != "linux" or libc != "glibc":
    return False
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as file:
      never = "[never]" in file.read()
    return tuple(int(part) for part in version.split(".")[:2]) >= _HUGE_PAGES_GLIBC and not never
  except (OSError, ValueError):
    return False


def use_huge_pages() -> None:
  """Re-executes the program (same interpreter, flags and arguments) with `GLIBC_TUNABLES` holding
  HUGE_PAGES_TUNABLE where `huge_pages_supported()`. Nothing happens when GLIBC_TUNABLES already sets
  glibc.malloc.hugetlb (yours wins) or CNNJAX_HUGE_PAGES=0 (the opt-out).

  glibc reads its tunables when a process starts, so a running program can only take them by starting again; call
  this first thing, before output or threads. The pid, working directory and open files stay the same.
  """
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if os.environ.get("CNNJAX_HUGE_PAGES") == "0" or "glibc.malloc.hugetlb" in tunables or not huge_pages_supported():
    return
  environment = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE)))}
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def main_module_flags(module_name: str, doc: Optional[str]) -> None:
  """Makes the flags `module_name` defines the main module's, so `--helpshort` lists them.

  absl's `--helpshort` shows the key flags of the module named by sys.argv[0] ('train.py', or the console script's
  path), and a flag is key to the module that defined it; when the flags are defined in a library module, the main
  module has none until they are registered for it here. `doc` becomes the usage text `--help` starts with where
  the main module has none (a console script's generated `__main__`).
  """
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  main = sys.modules.get("__main__")
  if main is not None and not getattr(main, "__doc__", None) and doc:
    main.__doc__ = doc


def config_import_root(path: str) -> Optional[str]:
  """The folder to put on sys.path so that the config file at `path` can import its sibling configs: the parent
  of the outermost package folder (one with __init__.py) holding the file; None when it is not in a package.
  `path` may carry config_flags' ':ARGUMENT' suffix."""
  if not os.path.isfile(path) and ":" in path:
    path = path.rsplit(":", 1)[0]
  if not os.path.isfile(path):
    return None  # config_flags reports the missing file
  folder = os.path.dirname(os.path.abspath(path))
  root = None
  while os.path.isfile(os.path.join(folder, "__init__.py")):
    root = os.path.dirname(folder)
    if root == folder:
      break
    folder = root
  return root


def define_distributed_flags(what: str, module_name: str) -> None:
  """Defines --distributed and the three flags that set jax.distributed.initialize() up by hand.

  Args:
    what: the help's prefix naming what runs over many hosts (e.g. '--dataset: ').
    module_name: the program module they belong to (its __name__), so `--helpshort` lists them with its own.
  """
  own = dict(module_name=module_name)
  flags.DEFINE_bool("distributed", False, f"{what}call jax.distributed.initialize() first (multi-host). Without the "
                    "three flags below it detects them from the cluster (Cloud TPU, SLURM, ...).", **own)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed by hand.", **own)
  flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed by hand.", **own)
  flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes), for --distributed by hand.",
                       **own)


def initialize_distributed() -> None:
  """jax.distributed.initialize() where --distributed asks for it; call it before anything starts JAX's backends."""
  if flags.FLAGS.distributed:
    import jax  # pylint: disable=import-outside-toplevel

    jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id)
