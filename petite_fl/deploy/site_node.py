"""A site's SuperNode: Flower's `flower-supernode`, with the bundle measured and approved before Flower reads it.

Flower's SuperNode pulls a run's app bundle (FAB) at the run's first message and reads its
pyproject.toml at once (the run config, `get_fused_config_from_fab`), before any process of
the site's sees the bundle: a 1 MiB zip whose pyproject.toml unpacks to 1 GiB would have the
site unpack 1 GiB before any approval. Here the bundle Flower just received is measured
(`deploy.bundle`) and its app hash checked (`deploy.approval`) first; a refused bundle gets
the message an error reply carrying the site's one-line refusal, exactly where Flower answers
a bundle its `--trusted-entities` cannot verify, and nothing of it is stored or unpacked.

What Flower still does before this check: it receives the bundle's compressed bytes whole,
in one HTTP reply of the coordinator's SuperLink (which caps a submitted bundle at 10 MiB).

The seam is a module attribute of Flower's (`start_client_internal._pull_and_store_message`);
`site_exec.replace_seam` refuses to start if it is missing, so an upgrade that moves it fails closed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from petite_fl.deploy.approval import AppNotApproved, check_app
from petite_fl.deploy.bundle import BundleLimits

MODULE = "petite_fl.deploy.site_node"


class BundleGate:
    """Wraps Flower's step that pulls one message (and, for a new run, its bundle): the bundle
    is measured and approved as it arrives, before Flower reads any of it."""

    def __init__(self, site: str, approved: Sequence[str], limits: BundleLimits,
                 pull: Callable[..., int | None]) -> None:
        self.site, self.approved, self.limits, self._pull = site, tuple(approved), limits, pull

    def pull(self, *, state: Any, object_store: Any, receive: Callable[[], Any], get_fab: Callable[[str, int], Any],
             **kwargs: Any) -> int | None:
        """Flower's `_pull_and_store_message`, with `get_fab` checking what it returns."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode
        from flwr.supercore import log
        from flwr.supernode import start_client_internal as flower

        received: list[Any] = []

        def receiving() -> Any:
            got = receive()
            received[:] = [got[0]] if got is not None else []
            return got

        def fetching(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            content = fab.content if isinstance(fab.content, bytes) else b""
            check_app(content, self.approved, self.site, self.limits)
            return fab

        try:
            return self._pull(state=state, object_store=object_store, receive=receiving, get_fab=fetching, **kwargs)
        except AppNotApproved as exc:
            log(logging.ERROR, "%s", exc)
            message = received[0]
            flower._insert_message(Message(Error(ErrorCode.INVALID_FAB, str(exc)), reply_to=message),
                                   state, object_store)
            return message.metadata.run_id


def _arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", allow_abbrev=False, add_help=False)
    parser.add_argument("--site", required=True, help="the site's name (for its log lines)")
    parser.add_argument("--approve", action="append", required=True, metavar="HASH", help="an approved app hash")
    parser.add_argument("--bundle-limits", default=BundleLimits().to_json(), help="the site's bundle bounds (JSON)")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """`flower-supernode` with `BundleGate` in front of its bundle; Flower's own options follow ours."""
    from flwr.supernode import start_client_internal as flower
    from flwr.supernode.cli import flower_supernode

    from petite_fl.deploy.site_exec import replace_seam

    ours, rest = _arguments(list(sys.argv[1:] if argv is None else argv))
    gate = BundleGate(ours.site, ours.approve, BundleLimits.from_json(ours.bundle_limits),
                      getattr(flower, "_pull_and_store_message", None))
    replace_seam(flower, "_pull_and_store_message", gate.pull)
    replace_seam(flower, "_insert_message", getattr(flower, "_insert_message", None))  # the refusal's reply path
    sys.argv = ["flower-supernode", *rest]  # Flower's parser reads sys.argv
    flower_supernode()


if __name__ == "__main__":
    main()
