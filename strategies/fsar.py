"""FSAR on the server: average only the shared (domain-invariant) parameters.

Sites send only what their policy marks shared (the backbone and the influence
topology ``I``); the unique topology ``U``, the topology scalars and the heads never
arrive here, so the average is over exactly the shared part (with ``share-head``, over
sites with one label set, the head is part of it). Optional server momentum
(FedAvgM) smooths the shared update across rounds. The local recipe (multi-grain
distillation, proximal term) reaches the sites through the train config.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvgM

from strategies.screening import ScreenedRounds


class FSAR(ScreenedRounds, FedAvgM):
    """Weighted average of shared parameters with optional server momentum."""

    def __init__(
        self,
        *,
        client_config: dict[str, Any],
        eval_every: int = 1,
        num_rounds: int = 0,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        **fedavg_options: Any,
    ) -> None:
        FedAvgM.__init__(
            self,
            server_learning_rate=server_learning_rate,
            server_momentum=server_momentum,
            **fedavg_options,
        )
        self.init_rounds(client_config, eval_every, num_rounds)
