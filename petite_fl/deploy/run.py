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
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail = [*tail[-40:], line.rstrip()]
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if code != 0:
        why = explain(tail) if explain else None
        raise PetiteError(f"{os.path.basename(cmd[0])} exited with code {code}" + (f": {why}" if why else ""))
    return code
