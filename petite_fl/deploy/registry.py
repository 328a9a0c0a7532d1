"""The coordinator's table of admitted sites: which SuperNode is which site.

`petite-server register --site X --key K` registers the key with Flower's SuperLink, which
gives the node its id, and records {node id: X} here (in the server's private state). The
ServerApp (started by the SuperLink petite-server runs, which points it here through an
environment variable) reads it (`federation.flower.sitetable`) and accepts a node's hello only
under the site name it was registered with: an admitted node cannot claim to be another hospital.
`--max-train-weight` / `--max-eval-count` are the operator's out-of-band word on how much the site
may weigh; its own counts are claims (`federation.server.weights`).
"""

from __future__ import annotations

from pathlib import Path

from petite_fl.atomic import write_json
from petite_fl.federation.flower.sitetable import ENV, read_table, registry_path, sites_by_node
from petite_fl.federation.server.weights import whole

__all__ = ["ENV", "attestation", "read_table", "record", "registry_path", "sites_by_node"]


def attestation(max_train_weight: int | None, max_eval_count: int | None) -> dict[str, int]:
    """The figures a site's table entry keeps, each a positive whole number (checked before Flower is asked)."""
    return {k: whole(v, f"--{k.replace('_', '-')}") for k, v in
            (("max_train_weight", max_train_weight), ("max_eval_count", max_eval_count)) if v is not None}


def record(path: Path, site: str, node_id: int, key_sha256: str, max_train_weight: int | None = None,
           max_eval_count: int | None = None) -> None:
    """Admit `site` as node `node_id` (a new key for a site replaces its old node), with the most it may
    weigh in training and in the reported means as its operator attests them (None: unattested)."""
    attested = attestation(max_train_weight, max_eval_count)
    table = {s: e for s, e in read_table(path).items() if e["node_id"] != node_id}
    table[site] = {"node_id": node_id, "key_sha256": key_sha256, **attested}
    write_json(path, table)
