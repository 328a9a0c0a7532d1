"""Command lines for Flower's own deployment processes, with petite-fl's secure defaults.

petite-fl does not reimplement any of Flower's transport: `flower-superlink` and
`flower-supernode` run as they are, with TLS and SuperNode authentication switched on
unless `insecure` is asked for explicitly. These functions only build their arguments,
so that the CLIs start exactly the same processes everywhere. (The `flwr` connection
entry is written by `connection.py`.)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from petite_fl.atomic import atomic_path
from petite_fl.errors import ConfigError

BIN = Path(sys.executable).parent


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
    cmd = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port), "--database", str(database),
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
                      node_config: Path, port: int) -> list[str]:
    """`flower-supernode` for one site: TLS with the coordinator's CA, authenticated by its key.

    `node_config` is a `.toml` file (`write_toml`) with the site's node config.
    """
    cmd = [str(BIN / "flower-supernode"), "--superlink", superlink, "--node-config", str(node_config),
           "--port", str(port)]
    if ca_cert is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(ca_cert)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key),
                "--auth-supernode-public-key", str(Path(str(private_key) + ".pub"))]
    return cmd
