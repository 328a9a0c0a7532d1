"""Run a Flower process in the foreground: output passed through, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

from petite_fl.errors import PetiteError


def run_foreground(cmd: list[str], env: dict[str, str] | None = None,
                   explain: Callable[[list[str]], str | None] | None = None) -> int:
    """Run `cmd` until it exits or Ctrl-C; a failure is explained from its last lines."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    tail: list[str] = []

    def on_term(signum, frame):  # a service manager's stop (SIGTERM) is a Ctrl-C: the child goes too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail = [*tail[-40:], line.rstrip()]
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        why = explain(tail) if explain else None
        raise PetiteError(f"{os.path.basename(cmd[0])} exited with code {code}" + (f": {why}" if why else ""))
    return code


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (Flower's own children too), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
