"""How the coordinator reaches its sites: a small interface, and an in-process carrier.

The round loop (`server.coordinator`) only asks a `Transport` to deliver one typed instruction
per node and give back typed replies or one-line errors per node. `flower/transport.py`
carries them as Flower messages (simulation or deployment); `LocalTransport` here calls
the same site code (`site.endpoint.SiteEndpoint`) in this process, which is how the overhead
benchmark's plain loop and fast tests run the very same algorithm without Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from petite_fl.console import one_line
from petite_fl.errors import ConfigError
from petite_fl.federation.aggregate import payload_bytes
from petite_fl.federation.server.protections import Protection
from petite_fl.federation.strategies import Strategy


@dataclass
class Exchange:
    """The replies to one instruction per node: {node: reply} and {node: why none}."""

    replies: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    unreadable: set[int] = field(default_factory=set)  # replies refused as malformed (logged as rejected)


class Transport(Protocol):
    def node_ids(self) -> list[int]:
        """The nodes connected now."""

    def exchange(self, messages: Mapping[int, Any], group: str, timeout: float) -> Exchange:
        """Deliver one instruction per node; replies come back typed (a carrier that reads them
        off a wire validates them first)."""

    def protect(self, strategy: Strategy, protection: Protection, n_sites: int) -> tuple[Strategy, Any]:
        """(the strategy wrapped with the run's protections, the round driver they need)."""

    def record_bytes(self, message: Any) -> int:
        """Bytes `message` takes on this carrier (its tensor payload)."""


def message_bytes(message: Any) -> int:
    """Tensor bytes of a message in memory (the in-process carrier has no wire format to count)."""
    return payload_bytes(getattr(message, "tensors", None) or {})


_WIRE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _copy(message: Any, transport: str) -> Any:
    """A message as if it had crossed the wire: its own tensors, floating ones rounded to the
    transport precision and received as float32, as Flower's records do."""
    tensors = getattr(message, "tensors", None)
    if not tensors:
        return message
    import dataclasses

    wire = _WIRE[transport]
    return dataclasses.replace(message, tensors={
        k: v.detach().to(wire).to(torch.float32) if v.is_floating_point() and transport != "float32"
        else v.detach().clone() for k, v in tensors.items()})


class LocalTransport:
    """Sites answered in this process, one after another, by the same code as a ClientApp's."""

    def __init__(self, node_configs: list[Mapping[str, Any]]) -> None:
        from petite_fl.federation.site.endpoint import SiteEndpoint

        self.sites = {1000 + i: SiteEndpoint(dict(c), {}) for i, c in enumerate(node_configs)}

    def node_ids(self) -> list[int]:
        return list(self.sites)

    def exchange(self, messages: Mapping[int, Any], group: str, timeout: float) -> Exchange:
        from petite_fl.federation.site.outgoing_errors import report

        out = Exchange()
        for node, message in messages.items():
            out.bytes_down[node] = message_bytes(message)
            wire = getattr(message, "transport", "float32")
            try:
                reply = _copy(self.sites[node].answer(_copy(message, wire)), wire)
            except Exception as exc:  # what a ClientApp would send: a whitelisted line (`site.outgoing_errors`)
                out.errors[node] = one_line(report(exc, self.sites[node].name()))
                continue
            out.replies[node] = reply
            out.bytes_up[node] = message_bytes(reply)
        return out

    def protect(self, strategy: Strategy, protection: Protection, n_sites: int) -> tuple[Strategy, Any]:
        if protection.secagg or protection.dp != "off":
            raise ConfigError("SecAgg+ and DP are Flower's protocols: run them through Flower (petite simulate)")
        from petite_fl.federation.server.protections import protect_plain
        from petite_fl.federation.server.rounds import plain_round

        return protect_plain(strategy, protection), plain_round

    def record_bytes(self, message: Any) -> int:
        return message_bytes(message)
