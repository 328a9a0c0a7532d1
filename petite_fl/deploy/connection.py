"""The `flwr` CLI's connection to a petite-fl coordinator: `[superlink.petite]` in
$FLWR_HOME/config.toml, so that `flwr run . petite` and `flwr supernode register` reach it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import tomli_w

from petite_fl.atomic import atomic_path

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
