"""Baseline strategies: Flower's FedAvg and FedProx with reply screening, and local-only.

FedBN and FedPer are FedAvg on the server; what differs is which parameters the sites
keep personal (normalization layers, the head), which the site learns from the
``policy`` in its train config (see ``models.roles``).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategies.screening import ScreenedRounds


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
    """No federation: every site trains alone; the floor that federating must beat."""

    def __init__(self, *, client_config: dict[str, Any], eval_every: int = 1, num_rounds: int = 0, **fedavg_options: Any) -> None:
        FedAvg.__init__(self, **fedavg_options)
        self.init_rounds(client_config, eval_every, num_rounds)

    def sends_arrays(self) -> bool:
        return False

    def aggregate_good(self, server_round: int, good: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # an empty record, not None: a warm start's round-1 model is sent once, not every round
        return ArrayRecord(), aggregate_metricrecords([m.content for m in good], self.weighted_by_key)
