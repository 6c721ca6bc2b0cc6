"""Forward/training tokens/s and peak memory of any spec over lengths: see nlframe/bench/model.py."""

import sys

from nlframe.bench.model import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
