"""`python -m cnnjax.models.onednn build`: compiles cnnjax's oneDNN convolution kernels into the cache folder
(cnnjax.models.onednn.build) and prints where; a missing oneDNN or compiler is a one-line error."""
import sys

from cnnjax.models import onednn


def main(argv) -> int:
  if argv[1:] != ["build"]:
    print(f"usage: python -m cnnjax.models.onednn build (got {' '.join(argv[1:]) or 'nothing'})", file=sys.stderr)
    return 2
  try:
    print(onednn.build())
  except onednn.Unavailable as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
