#!/usr/bin/env python
"""NormBench entry point: ``python run_benchmark.py [run|list] ...`` (see README)."""

import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
