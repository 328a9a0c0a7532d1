"""Command lines for Flower's own deployment processes, with petite-fl's secure defaults.

petite-fl does not reimplement any of Flower's transport: `flower-superlink` and
`flower-supernode` run as they are, with TLS and SuperNode authentication switched on
unless `insecure` is asked for explicitly; a site's SuperNode measures and approves a bundle
before Flower reads it (`site_node`), and its apps run in Flower's SuperExec and
`flwr-clientapp` code behind petite-fl's approval check (`site_superexec_command`).
A site's own Python processes start with `-P`: the working directory is not on sys.path.
Flower's executables come from this interpreter's scripts folder (`BIN`, a venv's bin), which
also goes first on the PATH of every process started (`flower_env`), so a service unit or a
container needs no PATH of its own. These functions only build their arguments,
so that the CLIs start exactly the same processes everywhere, and `stop_process_tree`
stops what they started. (The `flwr` connection entry is written by `connection.py`.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from petite_fl.atomic import atomic_path
from petite_fl.deploy.bundle import BundleLimits
from petite_fl.errors import ConfigError

#: This interpreter's scripts folder (a venv's bin, where pip put Flower's executables); not the
#: PATH's, which under systemd is the system's and holds no venv.
BIN = Path(sysconfig.get_path("scripts"))


def flower_executable(name: str) -> str:
    """The path of one of Flower's executables (`flower-superlink`, `flwr`) in `BIN`, or one line why not."""
    path = BIN / name
    if not os.access(path, os.X_OK):
        raise ConfigError(f"{name} not found in {BIN} (the scripts folder of {sys.executable}): install petite-fl "
                          "into this Python's environment (pip install petite-fl) and start it from there")
    return str(path)


def flower_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with `BIN` first on PATH: Flower's SuperLink starts
    `flower-superexec` by name, which must be this installation's whatever PATH the caller had."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and Path(p) != BIN]
    env["PATH"] = os.pathsep.join([str(BIN), *rest])
    return env


@dataclass(frozen=True)
class ServerTLS:
    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_folder(cls, folder: str | Path) -> ServerTLS:
        folder = Path(folder).expanduser()
        tls = cls(folder / "ca.crt", folder / "server.pem", folder / "server.key")
        missing = [p for p in (tls.ca_cert, tls.server_cert, tls.server_key) if not p.is_file()]
        if missing:
            raise ConfigError(f"TLS folder {folder} lacks {', '.join(p.name for p in missing)}; "
                              f"make them with `petite-server certs --out {folder}`")
        return tls


def superlink_command(*, tls: ServerTLS | None, auth: bool, host: str, port: int, database: Path) -> list[str]:
    """`flower-superlink` with TLS (unless tls is None: --insecure) and node authentication.

    In flwr 1.42 the Fleet, Control and runtime APIs share one HTTP port (`--host --port`):
    sites dial it, and so does `flwr` (the connection's `address`).
    """
    if auth and tls is None:
        raise ConfigError("SuperNode authentication needs TLS: drop --insecure or pass --no-auth")
    cmd = [flower_executable("flower-superlink"), "--host", host, "--port", str(port), "--database", str(database),
           "--disable-runtime-dependency-installation"]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                "--ssl-keyfile", str(tls.server_key)]
    if auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    """A TOML file of flat key = value pairs (Flower's --run-config and --node-config files), atomically.

    Flower reads a file argument that ends in `.toml` as TOML, so values keep their types
    and any string (a path with spaces or quotes) survives, which a `key=value` string does not.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(tomli_w.dumps(dict(values)))
    return path


def supernode_command(*, superlink: str, ca_cert: Path | None, private_key: Path | None,
                      node_config: Path, port: int, superexec_secret: Path, site: str, approved: Sequence[str],
                      limits: BundleLimits | None = None) -> list[str]:
    """`flower-supernode` for one site (`site_node`: a bundle measured against `limits` and its hash
    in `approved` before Flower reads it): TLS with the coordinator's CA, authenticated by its key.

    `node_config` is a `.toml` file (`write_toml`) with the site's node config. The SuperNode
    runs no app itself (`--isolation process`): the site's own SuperExec (`site_superexec_command`),
    the only holder of `superexec_secret` besides it, takes its tasks and runs approved apps only.
    """
    cmd = [sys.executable, "-P", "-m", "petite_fl.deploy.site_node", "--site", site,
           *[a for h in approved for a in ("--approve", h)], "--bundle-limits", (limits or BundleLimits()).to_json(),
           "--superlink", superlink, "--node-config", str(node_config),
           "--port", str(port), "--isolation", "process", "--superexec-auth-secret-file", str(superexec_secret)]
    if ca_cert is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(ca_cert)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key),
                "--auth-supernode-public-key", str(Path(str(private_key) + ".pub"))]
    return cmd


def site_superexec_command(*, site: str, port: int, approved: Sequence[str], superexec_secret: Path,
                           parent_pid: int, limits: BundleLimits | None = None) -> list[str]:
    """The site's SuperExec for the SuperNode whose Runtime API is on 127.0.0.1:`port`: it runs
    ClientApp tasks only, and only apps whose hash is in `approved`
    (`petite_fl.deploy.site_exec`). It exits with `parent_pid` (petite-client)."""
    return [sys.executable, "-P", "-m", "petite_fl.deploy.site_exec", "superexec",
            "--runtime-api-address", f"127.0.0.1:{port}", "--superexec-auth-secret-file", str(superexec_secret),
            "--parent-pid", str(parent_pid), "--site", site, *[a for h in approved for a in ("--approve", h)],
            "--bundle-limits", (limits or BundleLimits()).to_json()]


def write_secret(path: Path) -> Path:
    """A fresh random secret (32 bytes from the OS), readable by this user only, atomically."""
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_bytes(os.urandom(32))
    return path


#: What `stop_process_tree` sends by default: SIGTERM, up to 20 s to exit, then SIGKILL.
STOP_STEPS = ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0))


def stop_process_tree(proc: subprocess.Popen, grace: float = 0.0,
                      steps: Sequence[tuple[int, float]] = STOP_STEPS) -> bool:
    """Stop a process started with `start_new_session=True`, its process group and every descendant.

    Flower starts some of its processes in their own session (the SuperLink's SuperExec and
    the apps it runs), outside the launcher's group, so descendants are listed as well, and
    first: one whose parent dies is re-parented and no longer found under it. After `grace`
    seconds in which they may exit on their own, each (signal, seconds) of `steps` in turn
    goes to the group and the descendants until none is left. True when none is.
    """
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def gone_within(seconds: float) -> bool:
        nonlocal family
        deadline = time.monotonic() + seconds
        while True:
            proc.poll()  # reaps the launcher, so that its group can empty
            family = [p for p in family if running(p)]
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

    if grace and gone_within(grace):
        return True
    for sig, seconds in steps:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        if gone_within(seconds):
            return True
    return False
