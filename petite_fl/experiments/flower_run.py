"""Run the petite-fl Flower app in Flower's simulation engine, and report failure as failure.

`flwr run <app> --stream` is what users type; this wraps exactly that for petite-fl's own
commands and tests, with three fixes for traps of flwr 1.42:
- a private SuperLink on free ports and a private FLWR_HOME, stopped afterwards, so no
  background SuperLink outlives the command or serves a stale copy of the code;
- runtime dependency installation off (no network, no CUDA torch pulled in);
- `--stream` exits 0 even when the run failed: the run's final status is read back with
  `flwr ls --run-id` and a failed run raises.
The console carries petite-fl's lines: Ray's colour prefixes and log deduplication (which
hid sites' lines that differ only in numbers) are off, its FutureWarning about accelerator
variables is filtered, and Flower's own colour codes (always on in its logger) are taken out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petite_fl.deploy.ports import free_port
from petite_fl.deploy.processes import stop_process_tree, write_toml
from petite_fl.errors import PetiteError
from petite_fl.runconfig import app_dir

_RUN_ID = re.compile(r"Successfully started run (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Ray's tip about CUDA_VISIBLE_DEVICES at ray.init (the sites' GPU share is set by `resources`)
_RAY_TIP = "ignore::FutureWarning:ray._private.worker"


def quiet_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for Flower's simulation processes with Ray's console noise off (see the module's docstring)."""
    warnings = ",".join(w for w in (env.get("PYTHONWARNINGS", ""), _RAY_TIP) if w)
    return {**env, "RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0", "PYTHONWARNINGS": warnings}


def plain(line: str) -> str:
    """A streamed line without ANSI colour codes (Flower colours its log levels whatever the output)."""
    return _ANSI.sub("", line)


@dataclass
class RunResult:
    run_id: str
    status: str
    details: str
    seconds: float


class LocalSimulation:
    """A private simulation SuperLink for the duration of a `with` block."""

    def __init__(self, home: Path | None = None, echo: Callable[[str], None] | None = None,
                 database: str = ":flwr-in-memory:") -> None:
        self._tmp = None if home else tempfile.mkdtemp(prefix="petite-flwr-")
        self.home = Path(home or self._tmp)
        self.echo = echo or (lambda line: print(line, flush=True))
        self.bin = Path(sys.executable).parent
        self.http_port, self.control_port = free_port(), free_port()
        self.env = {**quiet_env(os.environ), "FLWR_HOME": str(self.home),
                    "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
                    "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.process: subprocess.Popen | None = None
        # In memory by default: the SuperLink lives as long as this block and nothing resumes
        # from its state. A SQLite file costs a synchronous write for every message.
        self.database = database

    def __enter__(self) -> LocalSimulation:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "superlink.log", "ab")
        self.process = subprocess.Popen(
            [str(self.bin / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--control-api-address", f"127.0.0.1:{self.control_port}", "--host", "127.0.0.1",
             "--port", str(self.http_port), "--database", self.database],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PetiteError(f"flower-superlink exited with code {self.process.returncode}; "
                                  f"see {self.home / 'superlink.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=0.5).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise PetiteError(f"flower-superlink did not become ready in {timeout:.0f} s; "
                          f"see {self.home / 'superlink.log'}")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            stop_process_tree(self.process)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def run(self, run_config: Mapping[str, Any], num_supernodes: int, cpus_per_client: float = 1.0,
            gpus_per_client: float = 0.0, app: Path | None = None) -> RunResult:
        """`flwr run <app> --stream` (default: the packaged app) with these run-config overrides; raises if the
        run failed."""
        app = app or app_dir()
        overrides = write_toml(self.home / "run-config.toml", run_config)
        federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client:g} "
                      f"client-resources-num-gpus={gpus_per_client:g}")
        cmd = [str(self.bin / "flwr"), "run", str(app), "--stream", "--federation-config", federation,
               "--run-config", str(overrides)]
        begin = time.perf_counter()
        run_id = None
        with subprocess.Popen(cmd, env=self.env, cwd=str(app), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            for line in proc.stdout:
                line = plain(line.rstrip("\n"))
                m = _RUN_ID.search(line)
                if m:
                    run_id = m.group(1)
                self.echo(line)
        seconds = time.perf_counter() - begin
        if run_id is None:
            raise PetiteError(f"`flwr run` did not start a run (exit code {proc.returncode}); see the output above")
        status, details = self.status(run_id)
        if status != "finished:completed":
            raise PetiteError(f"Flower run {run_id} ended as '{status}' ({details}); see the output above "
                              f"and {self.home / 'superlink.log'}")
        return RunResult(run_id, status, details, seconds)

    def status(self, run_id: str) -> tuple[str, str]:
        out = subprocess.run([str(self.bin / "flwr"), "ls", "--run-id", run_id, "--format", "json"],
                             env=self.env, capture_output=True, text=True, timeout=60)
        try:
            run = json.loads(out.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError):
            raise PetiteError(f"could not read the status of Flower run {run_id}: {out.stdout or out.stderr}") from None
        return str(run.get("status")), str(run.get("status-details"))


def resources(device: str) -> tuple[float, float]:
    """(CPUs, GPUs) per simulated site: a fraction of the GPU each when CUDA is used."""
    import torch

    cpus = 1.0
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return cpus, 0.2  # five sites share one GPU
    return cpus, 0.0
