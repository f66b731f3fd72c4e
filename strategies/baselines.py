"""Baseline strategies: Flower's FedAvg and FedProx with reply screening, and local-only.

FedBN and FedPer are FedAvg on the server; what differs is which parameters the sites
keep personal (normalization layers, the head), which the site learns from the
``policy`` in its train config (see ``models.roles``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategies.screening import ScreenedRounds, arrays_nbytes


class ScreenedFedAvg(ScreenedRounds, FedAvg):
    """FedAvg over whatever the sites' policy shares."""

    def __init__(self, *, client_config: dict[str, Any], eval_every: int = 1, num_rounds: int = 0, **fedavg_options: Any) -> None:
        FedAvg.__init__(self, **fedavg_options)
        self.init_rounds(client_config, eval_every, num_rounds)


class ScreenedFedProx(ScreenedRounds, FedProx):
    """FedProx: FedAvg plus a proximal term ``mu`` that Flower sends as ``proximal-mu``."""

    def __init__(
        self, *, client_config: dict[str, Any], eval_every: int = 1, num_rounds: int = 0,
        proximal_mu: float = 0.01, **fedavg_options: Any,
    ) -> None:
        FedProx.__init__(self, proximal_mu=proximal_mu, **fedavg_options)
        self.init_rounds(client_config, eval_every, num_rounds)


class LocalOnly(ScreenedRounds, FedAvg):
    """No federation: every site trains alone; the floor that federating must beat.

    Nothing is averaged and the global record stays empty. A warm start
    (``initial-model``, set as ``start_model``) is the one thing sent: each site receives
    it with its first train message, whichever round that is (with ``fraction-train`` < 1
    a site may first be sampled late), and nothing after. After a coordinator restart
    every site is sent it once more; one that has trained keeps its own model.
    """

    def __init__(self, *, client_config: dict[str, Any], eval_every: int = 1, num_rounds: int = 0, **fedavg_options: Any) -> None:
        FedAvg.__init__(self, **fedavg_options)
        self.init_rounds(client_config, eval_every, num_rounds)
        self.start_model = ArrayRecord()
        self._started_nodes: set[int] = set()

    def sends_arrays(self) -> bool:
        return False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, ArrayRecord(), config, grid))
        messages = self._with_start_model(messages)
        self.record_for(server_round).downlink_bytes = sum(
            arrays_nbytes(m.content[self.arrayrecord_key]) for m in messages
        )
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        # a site not trained yet is scored on the start model, not on a random one
        return self._with_start_model(list(super().configure_evaluate(server_round, ArrayRecord(), config, grid)))

    def _with_start_model(self, messages: list[Message]) -> list[Message]:
        """``messages``, with the start model in those to sites that have not trained yet."""
        if not len(self.start_model):
            return messages
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self._started_nodes:
                content = RecordDict({**dict(msg.content.items()), self.arrayrecord_key: self.start_model})
                msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
            out.append(msg)
        return out

    def aggregate_good(self, server_round: int, good: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # a site that failed or declined gets the start model again with its next train message
        self._started_nodes.update(m.metadata.src_node_id for m in good)
        return ArrayRecord(), aggregate_metricrecords([m.content for m in good], self.weighted_by_key)
