"""One training round as a driver: instructions out, replies checked, a typed result back.

`plain_round` sends the global shared tensors and checks every upload on its own
(`checks.check_update`) before the strategy may average it. The SecAgg+ driver
(`flower/secagg.py`) returns the same `RoundResult`, with the checked average of the sum
standing for each site's update. The coordinator does not know which driver it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from petite_fl.federation.messages import HelloRes, TrainIns
from petite_fl.federation.server.checks import check_update

Tensors = dict[str, torch.Tensor]


def group_id(label: str | None, name: str) -> str:
    """Flower's message group of one exchange: prefixed by a compare arm's label."""
    return f"{label}/{name}" if label else name


@dataclass
class RoundContext:
    """What a round driver needs of the run."""

    transport: Any                   # transport.Transport
    infos: Mapping[int, HelloRes]    # the run's sites by node
    strategy: Any                    # protected.Protected
    sha: str                         # the run's backbone
    bound: float                     # federation.robust.max_update_norm, resolved
    timeout: float
    label: str | None = None         # group prefix of a compare arm
    caps: Mapping[int, int] | None = None  # node → the most it weighs (server.weights); None: its hello count

    def group(self, name: str) -> str:
        return group_id(self.label, name)

    def cap(self, node: int) -> int:
        return self.caps[node] if self.caps is not None else self.infos[node].num_examples

    def instructions(self, ins: TrainIns) -> dict[int, TrainIns]:
        """`ins` for every site, each told the most it weighs (an honest site reports no more)."""
        return {n: replace(ins, max_weight=self.cap(n)) for n in self.infos}


@dataclass
class RoundResult:
    accepted: dict[int, dict[str, Any]] = field(default_factory=dict)  # node → its metrics (+ update_norm)
    errors: dict[int, str] = field(default_factory=dict)               # node → why it is left out
    updates: list[tuple[Tensors, int]] = field(default_factory=list)    # what the strategy aggregates
    transfer: list[dict[str, Any]] = field(default_factory=list)        # bytes per site
    rejected: list[dict[str, Any]] = field(default_factory=list)        # refused replies, for the run log
    notes: list[str] = field(default_factory=list)                      # what the driver wants said
    aggregated: bool = False  # the driver already averaged (SecAgg+): updates are copies of the mean
    uploads: dict[int, Tensors] = field(default_factory=dict)  # node → its accepted upload (not under SecAgg+)


def plain_round(ctx: RoundContext, rnd: int, ins: TrainIns, expected: Tensors) -> RoundResult:
    """Send `ins` to every site and keep the uploads that pass the checks against `expected`
    (the global shared tensors, or nothing in a local round)."""
    exchange = ctx.transport.exchange(ctx.instructions(ins), ctx.group(f"round-{rnd}"), ctx.timeout)
    result = RoundResult(errors=dict(exchange.errors))
    for node in exchange.unreadable:
        result.rejected.append({"round": rnd, "site": ctx.infos[node].site, "reason": exchange.errors[node]})
    for node, reply in exchange.replies.items():
        site = ctx.infos[node].site
        verdict = check_update(reply.tensors, reply.num_examples, reply.backbone_sha256, expected, ctx.sha,
                               ctx.bound)
        reason = verdict.reason or ctx.strategy.refuse(verdict.norm)
        if reason:
            result.errors[node] = reason
            result.rejected.append({"round": rnd, "site": site, "reason": reason})
            continue
        result.accepted[node] = {**reply.metrics, "update_norm": verdict.norm}
        # A site weighs at most its bound (min of its hello count and what the operator attests): a claim buys nothing.
        result.updates.append((reply.tensors, min(reply.num_examples, ctx.cap(node))))
        result.uploads[node] = reply.tensors
        result.transfer.append({"round": rnd, "site": site, "what": "peft",
                                "bytes_down": exchange.bytes_down.get(node, 0),
                                "bytes_up": exchange.bytes_up.get(node, 0)})
    return result
