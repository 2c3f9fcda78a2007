"""Quick start: ``python run_demo.py --num_samples 5 --tau 0.4``.

A thin wrapper around ``personc demo`` (see ``personc demo --help``).
"""

import sys

from personc_assets.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
