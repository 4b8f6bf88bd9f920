"""cnnjax.cli.use_huge_pages: train.py and explain.py re-execute themselves once with glibc's malloc on transparent
huge pages, which takes the per-step page faults of XLA:CPU's large buffers away (bench/RESULTS.md, "Huge pages")."""
import os
import subprocess
import sys
import textwrap

import pytest

from cnnjax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, **environment) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "CNNJAX_HUGE_PAGES")}
  done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                        env={**env, **environment}, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  return done


REEXEC = """
    import os, sys
    from cnnjax import cli
    print("before", os.getpid(), file=sys.stderr, flush=True)
    cli.use_huge_pages()
    print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


def test_the_program_restarts_once_in_the_same_process_with_the_tunable():
  done = _run(REEXEC)
  pid, tunables, _ = done.stdout.split(" ", 2)
  starts = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("before")]
  if cli.huge_pages_supported():
    assert tunables == cli.HUGE_PAGES_TUNABLE
    assert starts == [pid, pid]  # re-executed once, same pid (kill -9 and resume see one process)
  else:
    assert tunables == "None" and starts == [pid]


def test_your_tunables_are_kept_and_the_opt_out_leaves_the_environment_alone():
  kept = _run(REEXEC, GLIBC_TUNABLES="glibc.malloc.arena_max=2").stdout.split()[1]
  yours = "glibc.malloc.arena_max=2"
  assert kept == (f"{yours}:{cli.HUGE_PAGES_TUNABLE}" if cli.huge_pages_supported() else yours)
  assert _run(REEXEC, CNNJAX_HUGE_PAGES="0").stdout.split()[1] == "None"
  hugetlb_yours = "glibc.malloc.hugetlb=0"
  assert _run(REEXEC, GLIBC_TUNABLES=hugetlb_yours).stdout.split()[1] == hugetlb_yours


FAULTS = """
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 64 << 20  # above glibc's mmap threshold: mapped and unmapped on every malloc/free, as XLA's buffers are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
      block = libc.malloc(size)
      ctypes.memset(block, 1, size)
      libc.free(ctypes.c_void_p(block))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
"""


@pytest.mark.skipif(not cli.huge_pages_supported(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_the_tunable_takes_the_page_faults_of_large_buffers_away():
  plain = float(_run(FAULTS).stdout)
  huge = float(_run(FAULTS, GLIBC_TUNABLES=cli.HUGE_PAGES_TUNABLE).stdout)
  assert plain > 10_000  # 64 MB in 4 kB pages: 16,384 faults a buffer
  assert huge < plain / 4, (plain, huge)  # 544 against 16,385 on the development VM
