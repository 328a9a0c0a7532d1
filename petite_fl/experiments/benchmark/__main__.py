"""`python -m petite_fl.experiments.benchmark`: the benchmark command (also its worker processes)."""

import sys

from petite_fl.experiments.benchmark.cli import main

sys.exit(main())
