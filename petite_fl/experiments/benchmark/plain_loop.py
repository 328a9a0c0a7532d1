"""The federated job without Flower: the same coordinator and site code over the in-process transport.

Not a restatement of the algorithm: `Coordinator` runs its rounds over `LocalTransport`,
which calls each site's `SiteEndpoint` directly, so the only difference from `flwr run` is
the carrier (Flower's engine, messages, records and processes). A change in the site or the
server changes both columns of the overhead benchmark alike.
"""

from __future__ import annotations

import time
from typing import Any


def plain_loop(overrides: list[str], quiet: bool = True) -> dict[str, Any]:
    """Run the job of `overrides` in this process; its test PSNR and phase times (`quiet=False`:
    the coordinator's lines as `flwr run` prints them, for a run someone watches)."""
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.federation.transport import LocalTransport
    from petite_fl.runconfig import command_config, site_list

    begin = time.perf_counter()
    cfg = command_config(overrides)  # what the ServerApp composes for the same submission
    sites = site_list(cfg)
    nodes = [{"partition-id": i, "num-partitions": len(sites)} for i in range(len(sites))]
    summary = Coordinator(cfg, LocalTransport(nodes), quiet=quiet).run()
    return {"seconds": time.perf_counter() - begin, "test_psnr": summary["test_mean"].get("psnr"),
            "phase_seconds": summary["phase_seconds"]}
