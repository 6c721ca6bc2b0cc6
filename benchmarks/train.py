"""Training tokens/s of ready specs side by side: see nlframe/bench/train.py."""

import sys

from nlframe.bench.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
