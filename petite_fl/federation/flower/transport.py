"""The federation core's transport over a Flower `Grid` (simulation or deployment).

Each typed instruction becomes one Flower message (`codec.encode`), each reply is
read back and validated by its type's decoder (`codec.decode`): a reply that is not what it claims
is one line of error for that node, never an exception that ends the ServerApp. A hello reply of
another wire protocol is one line naming both versions (`messages.check_protocol`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from petite_fl.console import one_line
from petite_fl.federation.fields import Unreadable
from petite_fl.federation.flower.codec import decode, encode
from petite_fl.federation.flower.records import record_bytes
from petite_fl.federation.messages import REPLIES, ProtocolMismatch
from petite_fl.federation.server.protections import Protected, Protection, protect_plain
from petite_fl.federation.server.rounds import plain_round
from petite_fl.federation.transport import Exchange


class SiteRefused(Exception):
    """An error reply: the site (or Flower on its behalf) says why it did not answer."""


def read_reply(reply: Message, ins: Any) -> Any:
    """The one reading of every reply (hello, backbone, train, evaluate, error): the typed answer to
    `ins`, or `SiteRefused` with the error as one clean line, or an exception for a malformed one."""
    if reply.has_error():
        reason = one_line(reply.error.reason) if isinstance(reply.error.reason, str) and reply.error.reason else ""
        raise SiteRefused(reason or f"error code {one_line(reply.error.code, 40)}")
    if reply.metadata.message_type != ins.KIND:
        raise Unreadable(f"a '{one_line(reply.metadata.message_type, 40)}' reply to a '{ins.KIND}' message")
    return decode(REPLIES[type(ins)], reply.content, ins)


class FlowerTransport:
    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def record_bytes(self, message: Any) -> int:
        return record_bytes(encode(message))

    def registered_sites(self) -> dict[int, str] | None:
        """{node id: site} from `petite-server register`, where the coordinator keeps one."""
        from petite_fl.federation.flower.sitetable import sites_by_node

        return sites_by_node()

    def attested_sites(self) -> dict[str, Any] | None:
        """{site: the operator's attested bounds} from `petite-server register`, where the coordinator keeps a table."""
        from petite_fl.federation.flower.sitetable import attested_sites

        return attested_sites()

    def exchange(self, messages: Mapping[int, Any], group: str, timeout: float) -> Exchange:
        out, encoded, sent = Exchange(), {}, []
        for node, ins in messages.items():
            if id(ins) not in encoded:  # one record (and one count) per distinct instruction: the backbone is large
                record = encode(ins)
                encoded[id(ins)] = (record, record_bytes(record))
            content, out.bytes_down[node] = encoded[id(ins)]
            sent.append(Message(content=content, dst_node_id=node, message_type=ins.KIND, group_id=group))
        received = list(self.grid.send_and_receive(sent, timeout=timeout))
        # The SuperLink answers for a node it has lost (Flower's NODE_UNAVAILABLE) in its own
        # name (src_node_id 1): such a reply is matched to its node by the message it answers.
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
        for reply in received:
            node = reply.metadata.src_node_id
            if node not in messages:
                node = asked.get(reply.metadata.reply_to_message_id, node)
            if node not in messages:
                continue  # a reply to nothing this exchange asked
            try:
                out.replies[node] = read_reply(reply, messages[node])
            except SiteRefused as exc:
                out.errors[node] = str(exc)
                continue
            except ProtocolMismatch as exc:  # a site of another petite-fl: the line naming both versions
                out.errors[node] = one_line(str(exc))
                continue
            except Exception as exc:  # whatever a reply holds, it is one line for its node, never the ServerApp's end
                out.errors[node] = one_line(f"unreadable reply ({type(exc).__name__}: {exc})")
                out.unreadable.add(node)
                continue
            out.bytes_up[node] = record_bytes(reply.content)
        for node in messages:
            if node not in out.replies and node not in out.errors:
                out.errors[node] = f"no reply within federation.timeout={timeout:g} s"
        return out

    def protect(self, strategy: Any, protection: Protection, n_sites: int) -> tuple[Protected, Any]:
        """The strategy inside Flower's protections (SecAgg+ innermost, DP outside), and the round driver."""
        wrapped, driver = protect_plain(strategy, protection), plain_round
        if protection.secagg:
            from petite_fl.federation.flower.secagg import SecAggPlus

            wrapped = SecAggPlus(wrapped, protection, self.grid)
            driver = wrapped.drive
        if protection.dp != "off":
            from petite_fl.federation.flower.privacy import CentralDP

            wrapped = CentralDP(wrapped, protection, n_sites)
        return wrapped, driver
