# Train a cnnjax model: python train.py --config configs/simple_cnn.py --workdir runs/simple_cnn [--config.k=v]
#
# The program is cnnjax.cli.train (installed, the console script cnnjax-train: the same flags); its docstring,
# which `python train.py --help` prints, says what a run writes.
from cnnjax.cli.train import run

if __name__ == "__main__":
  run()
