"""`python -m simulation.benchmark` from a checkout: runs petite_fl.experiments.benchmark."""

import sys

from petite_fl.experiments.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
