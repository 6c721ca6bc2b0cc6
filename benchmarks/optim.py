"""Optimizer step time against torch.optim: see nlframe/bench/optim.py."""

import sys

from nlframe.bench.optim import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
