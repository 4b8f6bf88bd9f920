# Explain a trained or imported model's predictions on image files, or on a local web page:
#   python explain.py --workdir runs/simple_cnn --images a.jpg --methods saliency,gradcam --target top1
#
# The program is cnnjax.cli.explain (installed, the console script cnnjax-explain: the same flags); its docstring,
# which `python explain.py --help` prints, has the examples.
from cnnjax.cli.explain import run

if __name__ == "__main__":
  run()
