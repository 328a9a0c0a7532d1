"""The coordinator's table of admitted sites as the ServerApp reads it: which SuperNode is which site.

`petite-server register` writes it (`deploy.registry`); the ServerApp, started by the SuperLink
that petite-server runs, finds it through an environment variable and accepts a node's hello
only under the site name it was registered with, and weighs each site at most what the operator
attested there (`--max-train-weight`, `--max-eval-count`; `server.weights`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from petite_fl.errors import ConfigError
from petite_fl.federation.server.weights import Attested, from_registry

ENV = "PETITE_FL_SITE_REGISTRY"


def registry_path(state: Path) -> Path:
    return state / "sites.json"


def read_table(path: Path) -> dict[str, dict]:
    """{site: {"node_id", "key_sha256"[, "max_train_weight", "max_eval_count"]}}; {} where none is registered yet."""
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


def _kept(path: Path | None) -> Path | None:
    if path is None:
        value = os.environ.get(ENV)
        return Path(value) if value else None
    return path


def attested_sites(path: Path | None = None) -> dict[str, Attested] | None:
    """{site: what the operator attested at `petite-server register`}; None where no table is kept."""
    path = _kept(path)
    if path is None:
        return None
    table = read_table(path)
    return {site: a for site, e in table.items() if (a := from_registry(e, site)) is not None}


def sites_by_node(path: Path | None = None) -> dict[int, str] | None:
    """{node id: site} of the running coordinator; None where none is kept (simulation, a
    SuperLink not started by petite-server): then names are only checked against federation.sites."""
    path = _kept(path)
    if path is None:
        return None
    return {e["node_id"]: site for site, e in read_table(path).items()}
