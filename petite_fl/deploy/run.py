"""Run a Flower process in the foreground: output passed through, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from petite_fl.deploy.processes import flower_env, stop_process_tree
from petite_fl.errors import PetiteError


@dataclass(frozen=True)
class Companion:
    """A process that serves beside the main one (the coordinator's public proxy): if either
    exits, both stop, so that a service manager sees one failure and restarts the whole."""

    name: str
    cmd: list[str]
    why_exited: Callable[[], str]


def run_foreground(cmd: list[str], env: dict[str, str] | None = None,
                   explain: Callable[[list[str]], str | None] | None = None,
                   companions: Sequence[Companion] = (), cwd: str | os.PathLike | None = None) -> int:
    """Run `cmd` (and its companions) until it exits or Ctrl-C; a failure is explained from its last lines.

    Flower's processes start helpers (a SuperNode its SuperExec) that inherit the output
    pipe and outlive a failed parent, so the parent's exit, not the pipe's end, decides;
    its process group goes with it. They run with this installation's scripts folder first on
    PATH (`flower_env`: `env`, default this process's), as Flower starts some helpers by name.
    """
    def on_term(signum, frame):  # a service manager's stop (SIGTERM) is a Ctrl-C: the child goes too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)  # before the child exists: no window to orphan it
    launched: list[subprocess.Popen] = []
    env = flower_env(env)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True, cwd=cwd)
        launched.append(proc)
        for companion in companions:
            launched.append(subprocess.Popen(companion.cmd, env=env, start_new_session=True))
    except BaseException:
        for p in launched:
            stop_process_tree(p)
        signal.signal(signal.SIGTERM, previous)
        raise
    started = list(zip(companions, launched[1:], strict=True))
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
                pass
            for companion, p in started:
                if p.poll() is not None:
                    stop_process_tree(proc)
                    raise PetiteError(f"{companion.name} exited with code {p.returncode}: {companion.why_exited()}; "
                                      f"{_name(cmd)} stopped with it")
    except KeyboardInterrupt:
        stop_process_tree(proc)
        raise
    finally:
        for _, p in started:
            stop_process_tree(p)
        signal.signal(signal.SIGTERM, previous)
    reader.join(timeout=2)  # the last lines, if the helpers have let go of the pipe
    # Helpers left behind by the exited parent; they follow it on their own, and a SIGTERM
    # in the middle of Flower's own shutdown prints a spurious traceback, so give them time.
    stop_process_tree(proc, grace=5.0)
    if code != 0:
        why = explain(list(tail)) if explain else None
        raise PetiteError(f"{_name(cmd)} exited with code {code}" + (f": {why}" if why else ""))
    return code


def _name(cmd: Sequence[str]) -> str:
    """What a command is called in a message: its program, or the module a `python -m` runs."""
    return cmd[cmd.index("-m") + 1] if "-m" in cmd[:4] else os.path.basename(cmd[0])
