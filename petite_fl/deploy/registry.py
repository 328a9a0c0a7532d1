"""The coordinator's table of admitted sites: which SuperNode is which site.

`petite-server register --site X --key K` registers the key with Flower's SuperLink, which
gives the node its id, and records {node id: X} here (in the server's private state). The
ServerApp (started by the SuperLink petite-server runs, which points it here through an
environment variable) then accepts a node's hello only under the site name it was
registered with: an admitted node cannot claim to be another hospital.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from petite_fl.atomic import write_json
from petite_fl.errors import ConfigError

ENV = "PETITE_FL_SITE_REGISTRY"


def registry_path(state: Path) -> Path:
    return state / "sites.json"


def _read(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: the site table is not valid JSON; restore it or register the sites again") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("node_id"), int)
                                             for v in data.values()):
        raise ConfigError(f"{path}: the site table must map each site to its node_id")
    return data


def record(path: Path, site: str, node_id: int, key_sha256: str) -> None:
    """Admit `site` as node `node_id` (a new key for a site replaces its old node)."""
    table = {s: e for s, e in _read(path).items() if e["node_id"] != node_id}
    table[site] = {"node_id": node_id, "key_sha256": key_sha256}
    write_json(path, table)


def sites_by_node(path: Path | None = None) -> dict[int, str] | None:
    """{node id: site} of the running coordinator; None where none is kept (simulation, a
    SuperLink not started by petite-server): then names are only checked against federation.sites."""
    if path is None:
        value = os.environ.get(ENV)
        if not value:
            return None
        path = Path(value)
    return {e["node_id"]: site for site, e in _read(path).items()}
