"""Run a Flower process in the foreground: output passed through, Ctrl-C stops it cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from petite_fl.errors import PetiteError


def run_foreground(cmd: list[str], env: dict[str, str] | None = None,
                   explain: Callable[[list[str]], str | None] | None = None) -> int:
    """Run `cmd` until it exits or Ctrl-C; a failure is explained from its last lines.

    Flower's processes start helpers (a SuperNode its SuperExec) that inherit the output
    pipe and outlive a failed parent, so the parent's exit, not the pipe's end, decides;
    its process group goes with it.
    """
    def on_term(signum, frame):  # a service manager's stop (SIGTERM) is a Ctrl-C: the child goes too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)  # before the child exists: no window to orphan it
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
    except BaseException:
        signal.signal(signal.SIGTERM, previous)
        raise
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
            del tail[:-40]

    try:
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        _stop(proc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    reader.join(timeout=2)  # the last lines, if the helpers have let go of the pipe
    # Helpers left behind by the exited parent; they follow it on their own, and a SIGTERM
    # in the middle of Flower's own shutdown prints a spurious traceback, so give them time.
    _stop(proc, grace=5.0)
    if code != 0:
        why = explain(list(tail)) if explain else None
        raise PetiteError(f"{os.path.basename(cmd[0])} exited with code {code}" + (f": {why}" if why else ""))
    return code


def _stop(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """After `grace` seconds, SIGTERM to the child's process group and to every descendant,
    SIGKILL to what lingers.

    Descendants are listed too because Flower starts some of its processes in their own
    session (the SuperLink's SuperExec and the apps it runs), outside the group.
    """
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []

    def gone(wait: float) -> bool:
        nonlocal family
        deadline = time.monotonic() + wait
        while True:
            proc.poll()
            family = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
                group_alive = True
            except ProcessLookupError:
                group_alive = False
            if not group_alive and not family:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    if grace and gone(grace):
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        if gone(wait):
            return
