"""`python -m simulation.learning_curve` from a checkout: runs petite_fl.experiments.learning_curve."""

import sys

from petite_fl.experiments.learning_curve import main

if __name__ == "__main__":
    sys.exit(main())
