"""Train a cnnjax model: cnnjax-train --config configs/simple_cnn.py --workdir runs/simple_cnn [--config.k=v]
(from a checkout: python train.py ..., the same program).

Outputs in the workdir: config.json, summary.txt, metrics.jsonl, loss.png, accuracy.png, eval.json,
confusion_matrix.png, TensorBoard events and checkpoints/. Rerunning on the same workdir resumes the run.
With --config.lr_find=True it runs the LR range test instead (lr_find.png, lr_find.json; no checkpoints).

--config is a Python file with get_config() (ml_collections config_flags). When it lies in a package folder (the
checkout's configs/ has an __init__.py), the folder above that package goes on sys.path first, so that its
configs import each other (`from configs import default`) from any working directory, as `python train.py`
allows from the checkout's root.
"""
import os
import sys
from typing import List, Optional, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from cnnjax import cli

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots (resumed if it exists).")
cli.define_distributed_flags("", __name__)
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    # Progress bars and one line per epoch say what matters; orbax's INFO lines would drown them.
    logging.set_verbosity(logging.WARNING)
  cli.initialize_distributed()
  from cnnjax.train import Interrupted, lr_find, train_and_evaluate  # pylint: disable=import-outside-toplevel
  try:
    config = flags.FLAGS.config
    run_config = lr_find if config.lr_find else train_and_evaluate
  except OSError:  # ml_collections defers a missing config file's error to the first use of the config
    sys.exit(_no_config_file())
  try:
    run_config(config, flags.FLAGS.workdir)
  except Interrupted as interruption:
    print(f"interrupted: {interruption}", file=sys.stderr)
    sys.exit(130)
  except (ValueError, FloatingPointError, OSError) as error:
    if os.environ.get("CNNJAX_DEBUG"):
      raise
    # One line the user can act on; CNNJAX_DEBUG=1 shows the traceback. OSError: a full disk or an unwritable
    # workdir (the checkpoint and workdir writers say which path and what to do).
    sys.exit(f"error: {' '.join(str(error).split())}")


def _config_argument(argv: Sequence[str]) -> Optional[str]:
  """The last --config value on the command line (absl takes the last), as written."""
  path = None
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and index + 1 < len(argv):
      path = argv[index + 1]
  return path


def _no_config_file(argv=None) -> str:
  path = flags.FLAGS["config"].config_filename
  if argv:  # while parsing, the flag does not know the file yet
    path = _config_argument(argv) or path
  return f"error: no config file at {path}; pass --config configs/NAME.py"


def _add_config_import_root(argv: Sequence[str]) -> None:
  path = _config_argument(argv)
  root = cli.config_import_root(path) if path else None
  if root and os.path.realpath(root) not in {os.path.realpath(entry or ".") for entry in sys.path}:
    sys.path.insert(0, root)


def parse_flags(argv: List[str]):
  """absl's flag parsing, with an override of a field the config lacks (--config.lerning_rate=...) reported
  in one line instead of ml_collections' traceback."""
  _add_config_import_root(argv)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, OSError) as error:
    if os.environ.get("CNNJAX_DEBUG"):
      raise
    if isinstance(error, OSError):  # --config.FIELD overrides of a config file that is not there
      sys.exit(_no_config_file(argv))
    # ml_collections raises KeyError('\'name\'\nDid you mean "x" instead of "name"?') wrapped in AttributeError.
    text = str(error).encode("latin-1", "backslashreplace").decode("unicode_escape")
    field, _, hint = text.strip("'\"").partition("\n")
    flag = next((arg.split("=")[0] for arg in argv if arg.startswith("--config.") and field.strip("'\"") in arg),
                "a --config.FIELD flag")
    sys.exit(f"error: {flag}: the config has no field {field.strip(chr(39) + chr(34))!r}"
             f"{'; ' + hint.strip() if hint else ''} (fields: configs/default.py)")


def run() -> None:
  """The program (console script `cnnjax-train`; train.py calls it too)."""
  cli.use_huge_pages()
  cli.main_module_flags(__name__, __doc__)
  app.run(main, flags_parser=parse_flags)
