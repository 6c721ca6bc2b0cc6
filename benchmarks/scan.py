"""Scan backend throughput (chunked vs reference vs matmul peak): see nlframe/bench/scan.py."""

import sys

from nlframe.bench.scan import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
