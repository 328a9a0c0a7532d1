"""What every petite CLI shares: one-line user errors, Ctrl-C, a console."""

from __future__ import annotations

from collections.abc import Callable

from rich.markup import escape

from petite_fl.console import console, err_console
from petite_fl.errors import PetiteError

__all__ = ["console", "err_console", "run_cli"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(prog: str, body: Callable[[], int | None]) -> int:
    """Run a CLI body: user errors print as `prog: error: ...` (no traceback) and exit 2."""
    try:
        return int(body() or 0)
    except PetiteError as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        # The message is text, not markup: `[sub-01]` in a path or `[a,b]` in an override must survive.
        err_console.print(f"[bold red]{prog}: error:[/] {escape(lines[0])}", soft_wrap=True)
        for line in lines[1:]:
            err_console.print(f"  {escape(line)}", soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        err_console.print(f"{prog}: interrupted")
        return EXIT_INTERRUPTED
