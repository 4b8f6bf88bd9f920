"""Fault injectors shared by the reliability tests: a full disk and a read-only file system."""
import builtins
import contextlib
import errno
import io
import os
import resource
import signal

from cnnjax.train import checkpoint as checkpoint_lib

# The checkpoints of the tests' tiny runs keep their ~480 KB of arrays in files of 100 KB and more (how orbax
# splits them varies); their metadata files and everything else a run writes before them stay under 16 KB.
FILE_SIZE_LIMIT = 32 * 1024


@contextlib.contextmanager
def disk_full(limit: int = FILE_SIZE_LIMIT):
  """Real write failures in every writer, C++ ones (tensorstore, under orbax) included: no file may grow past
  `limit` bytes (RLIMIT_FSIZE), so a big write fails half-way with EFBIG as on a full disk. SIGXFSZ, which
  would kill the process, is ignored for the duration."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def with_file_size_limit(command, limit: int = FILE_SIZE_LIMIT):
  """`command` (python SCRIPT ARGS...) run under the same limit from its start (no preexec_fn: forking a
  process that runs JAX's threads is unsafe)."""
  python, script, *args = command
  setup = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
  return [python, "-c", setup, script, *args]


@contextlib.contextmanager
def failing_writes(monkeypatch, root, code: int = errno.EROFS):
  """Every Python-level write under `root` fails with `code` (EROFS: a read-only mount; ENOSPC; EACCES), as
  the kernel would: creating a directory that exists still says EEXIST, reading still works. Root ignores
  chmod, so this is how the tests make a workdir read-only whoever runs them."""
  root = os.path.abspath(root)
  real = {"mkdir": os.mkdir, "open": builtins.open, "os_open": os.open, "replace": os.replace, "rename": os.rename}

  def under(path) -> bool:
    if isinstance(path, int):
      return False
    path = os.path.abspath(os.fsdecode(os.fspath(path)))
    return path == root or path.startswith(root + os.sep)

  def fail(path):
    raise OSError(code, os.strerror(code), os.fsdecode(os.fspath(path)))

  def mkdir(path, *args, **kwargs):
    if under(path):
      if os.path.exists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
      fail(path)
    return real["mkdir"](path, *args, **kwargs)

  def open_(file, mode="r", *args, **kwargs):
    if under(file) and any(flag in mode for flag in "wax+"):
      fail(file)
    return real["open"](file, mode, *args, **kwargs)

  def os_open(path, flags, *args, **kwargs):
    if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
      fail(path)
    return real["os_open"](path, flags, *args, **kwargs)

  def move(name):
    def moved(source, destination, *args, **kwargs):
      if under(source) or under(destination):
        fail(destination)
      return real[name](source, destination, *args, **kwargs)
    return moved

  with monkeypatch.context() as patch:
    for module in (builtins, io):
      patch.setattr(module, "open", open_)
    patch.setattr(os, "mkdir", mkdir)
    patch.setattr(os, "open", os_open)
    patch.setattr(os, "replace", move("replace"))
    patch.setattr(os, "rename", move("rename"))
    yield


def fault_on_save(monkeypatch, number: int, fault):
  """Runs the `number`-th (1-based) Checkpoints.save of the test inside `fault()` (a context manager)."""
  real_save = checkpoint_lib.Checkpoints.save
  calls = {"count": 0}

  def save(self, *args, **kwargs):
    calls["count"] += 1
    if calls["count"] != number:
      return real_save(self, *args, **kwargs)
    with fault():
      return real_save(self, *args, **kwargs)
  monkeypatch.setattr(checkpoint_lib.Checkpoints, "save", save)
  return calls


def compilation_cache_env():
  """Environment for a train.py subprocess to read the test session's persistent XLA cache (tests/conftest.py),
  so it does not compile again what this process compiled."""
  import jax  # pylint: disable=import-outside-toplevel
  return {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
