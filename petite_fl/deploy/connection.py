"""The `flwr` CLI's connection to a petite-fl coordinator: `[superlink.petite]` in
$FLWR_HOME/config.toml, so that `flwr run . petite` and `flwr supernode register` reach it;
`read_connection` and `probe` check one before `petite compare --federation` submits to it.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from petite_fl.atomic import atomic_path
from petite_fl.errors import ConfigError, PetiteError

NAME = "petite"


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def write_connection(address: str, ca_cert: Path | None, name: str = NAME) -> Path:
    """Add or update the connection; other entries of config.toml are kept."""
    path = flwr_home() / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlink = data.setdefault("superlink", {})
    entry = {"address": address}
    if ca_cert is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(ca_cert).expanduser().resolve())
    superlink[name] = entry
    superlink.setdefault("default", name)
    with atomic_path(path) as tmp:
        tmp.write_text(tomli_w.dumps(data))
    return path


@dataclass(frozen=True)
class Connection:
    """One `[superlink.NAME]` entry: where `flwr run . NAME` submits."""

    name: str
    address: str
    config: Path  # the config.toml it was read from


def read_connection(name: str) -> Connection:
    """The deployed coordinator a connection names; refused in one line if there is none."""
    path = flwr_home() / "config.toml"
    try:
        data = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable flwr configuration ({exc})") from None
    entries = {k: v for k, v in (data.get("superlink") or {}).items() if isinstance(v, dict)}
    if name not in entries:
        known = ", ".join(entries) or "none"
        raise ConfigError(f"--federation {name}: no such connection in {path} (known: {known}); petite-server "
                          f"writes `{NAME}` when it starts (set FLWR_HOME to the coordinator's)")
    address = entries[name].get("address")
    if not address:
        raise ConfigError(f"--federation {name}: the connection in {path} has no address (a local simulation, "
                          "not a deployed coordinator); run `petite compare` without --federation to simulate")
    return Connection(name, str(address), path)


def probe(conn: Connection, timeout: float = 3.0) -> None:
    """Refuse a coordinator that does not answer (a TCP connection to its Control API), before anything is
    submitted: `flwr run` itself would retry for minutes."""
    host, _, port = conn.address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise PetiteError(f"--federation {conn.name}: the coordinator at {conn.address} does not answer ({why}); "
                          "is petite-server running?") from None
