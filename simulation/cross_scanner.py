"""`python -m simulation.cross_scanner` from a checkout: runs petite_fl.experiments.cross_scanner."""

import sys

from petite_fl.experiments.cross_scanner import main

if __name__ == "__main__":
    sys.exit(main())
