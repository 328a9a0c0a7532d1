"""The shared rich consoles (stdout and stderr) for progress and tables."""

from __future__ import annotations

import sys

from rich.console import Console

# Rich falls back to 80 columns when output is piped or logged: tables need more.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB' (binary units, as transfer sizes are reported)."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
