"""A Flower ``Grid`` that delivers messages to in-process site functions, for tests that
run the real server loop and client code without a SuperLink or Ray."""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SiteFn = Callable[[Message, Context], Message]


@contextmanager
def coordinator_identity() -> Iterator[None]:
    """Messages created on the coordinator need its task identity (run 1, node 0)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def unreachable(message: Message, context: Context) -> Message:
    raise AssertionError("this test's grid only lists nodes; nothing is sent")


class InProcessGrid(Grid):
    """Each node id maps to a site function; messages go out in node-id order, a site
    that raises answers with an error reply (as Flower does for a failing ClientApp),
    every message sent is kept in ``downlink`` and every reply in ``uplink``, with the
    parameter names each reply carried as it left its site in ``uplink_keys`` (the
    strategy may strip the replies afterwards)."""

    def __init__(self, sites: dict[int, SiteFn],
                 node_config: Callable[[int], dict[str, Any]] | None = None) -> None:
        self.sites = sites
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=node_config(nid) if node_config else {},
                         state=RecordDict(), run_config={})
            for nid in sites
        }
        self.uplink: list[Message] = []
        self.downlink: list[Message] = []
        self.uplink_keys: list[list[str]] = []
        self._ids = itertools.count()

    @classmethod
    def listing(cls, num_nodes: int) -> "InProcessGrid":
        """Nodes ``1..num_nodes`` for strategies that only sample sites."""
        return cls({nid: unreachable for nid in range(1, num_nodes + 1)})

    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> None:
        return None

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.sites)

    def push_messages(self, messages: Any) -> Any:
        raise NotImplementedError

    def pull_messages(self, message_ids: Any) -> Any:
        raise NotImplementedError

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for m in sorted(messages, key=lambda m: m.metadata.dst_node_id):
            nid = m.metadata.dst_node_id
            meta = Metadata(run_id=1, message_id=f"m{next(self._ids)}", src_node_id=0, dst_node_id=nid,
                            reply_to_message_id="", group_id=m.metadata.group_id, created_at=time.time(),
                            ttl=600.0, message_type=m.metadata.message_type)
            incoming = Message(content=m.content, metadata=meta)
            self.downlink.append(incoming)
            try:
                reply = self.sites[nid](incoming, self.contexts[nid])
            except Exception as err:  # noqa: BLE001 - Flower turns a failing ClientApp into an error reply
                reply = Message(Error(code=1, reason=str(err)), reply_to=incoming)
            self.uplink.append(reply)
            self.uplink_keys.append([] if reply.has_error() else
                                    sorted(k for rec in reply.content.array_records.values() for k in rec.keys()))
            replies.append(reply)
        return replies
