"""An in-process Flower Grid for fast tests of the real ServerApp/ClientApp logic (no Ray).

Each message is handed to the real ClientApp object with a per-node Context, and the
reply comes back as Flower would return it. Every message and reply is kept so tests can
inspect what travelled. Creating instruction messages outside a Flower run needs the
task identity set; that private API is touched here and nowhere else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


def outside_a_run() -> None:
    """Let messages be created outside a Flower run (they need a task identity)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, run_config: dict[str, Any], node_configs: list[dict[str, Any]],
                 fail: dict[int, Callable[[Message], bool]] | None = None) -> None:
        outside_a_run()
        self.app = client_app
        self.run_config = dict(run_config)
        self.nodes = {1000 + i: dict(c) for i, c in enumerate(node_configs)}
        self.fail = fail or {}  # node id -> which messages it "crashes" on (no reply)
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        # One Context per node, kept across messages as a SuperNode keeps it for a run
        # (SecAgg+'s mod stores its keys in the node's state between stages).
        self.contexts = {n: Context(run_id=1, node_id=n, node_config=c, state=RecordDict(),
                                    run_config=self.run_config) for n, c in self.nodes.items()}

    def set_run(self, run) -> None:  # pragma: no cover - not used by petite-fl
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        out = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.fail and self.fail[node](msg):
                continue
            # A copy, as if it had crossed the wire: a handler (SecAgg+'s mod does) may edit its message.
            reply = self.app(copy.deepcopy(msg), self.contexts[node])
            self.replies.append(reply)
            out.append(reply)
        return out
