"""The shared rich consoles (stdout and stderr), and how text reaches a terminal: one-line user
errors (`run_cli`), foreign text made one printable line (`one_line`) or a peer's name made safe to
print (`printable`), byte counts for people."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

from petite_fl.errors import PetiteError

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


#: How Flower reports an exception a ClientApp raised: "<class 'module.Name'>:<'text'>"
_WRAPPED = re.compile(r"<class '[\w.]+'>:<'(.*)'>", re.S)


def one_line(value: Any, limit: int = 400) -> str:
    """What a site sent as text, made one printable line of at most `limit` characters.

    It ends up in the server's terminal and logs: newlines, escape sequences and other
    control characters are blanked, Flower's exception wrapper is taken off, length is capped.
    """
    text = value if isinstance(value, str) else repr(value)
    wrapped = _WRAPPED.fullmatch(text.strip())
    if wrapped:
        text = wrapped.group(1)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(value: Any, limit: int = 80) -> str:
    """A string a peer chose (a site's name or device, an app's name), safe in a log line: control and
    other non-printable characters shown escaped (`\\x1b`, `\\n`), so an ANSI sequence or a newline can
    neither restyle a terminal nor forge a line; at most `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
