"""The coordinator's table of admitted sites: which SuperNode is which site.

`petite-server register --site X --key K` registers the key with Flower's SuperLink, which
gives the node its id, and records {node id: X} here (in the server's private state). The
ServerApp (started by the SuperLink petite-server runs, which points it here through an
environment variable) reads it (`federation.flower.sitetable`) and accepts a node's hello only
under the site name it was registered with: an admitted node cannot claim to be another hospital.
"""

from __future__ import annotations

from pathlib import Path

from petite_fl.atomic import write_json
from petite_fl.federation.flower.sitetable import ENV, read_table, registry_path, sites_by_node

__all__ = ["ENV", "record", "registry_path", "sites_by_node"]


def record(path: Path, site: str, node_id: int, key_sha256: str) -> None:
    """Admit `site` as node `node_id` (a new key for a site replaces its old node)."""
    table = {s: e for s, e in read_table(path).items() if e["node_id"] != node_id}
    table[site] = {"node_id": node_id, "key_sha256": key_sha256}
    write_json(path, table)
