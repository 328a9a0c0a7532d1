"""The shared rich consoles (stdout and stderr) for progress and tables."""

from __future__ import annotations

import sys

from rich.console import Console

# Rich falls back to 80 columns when output is piped or logged: tables need more.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)
