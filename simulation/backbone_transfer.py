"""`python -m simulation.backbone_transfer` from a checkout: runs petite_fl.experiments.backbone_transfer."""

import sys

from petite_fl.experiments.backbone_transfer import main

if __name__ == "__main__":
    sys.exit(main())
