"""The round loop: Flower strategy calls, one round after another, from any start round.

Flower's ``Strategy.start`` always begins at round 1; a coordinator that resumes after a
crash must begin at round k+1 with the checkpointed model, so the loop lives here and
calls the same strategy methods in the same order.
"""

from __future__ import annotations

import logging
from typing import Callable

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

log = logging.getLogger(__name__)

RoundHook = Callable[[int, ArrayRecord], None]


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    first_round: int,
    last_round: int,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    on_round_end: RoundHook,
    timeout: float = 3600.0,
) -> ArrayRecord:
    """Run rounds ``first_round..last_round``; return the final global arrays."""
    for server_round in range(first_round, last_round + 1):
        log.info("round %d/%d", server_round, last_round)
        replies = grid.send_and_receive(
            messages=strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), grid),
            timeout=timeout,
        )
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(evaluate_config)), grid),
            timeout=timeout,
        )
        strategy.aggregate_evaluate(server_round, replies)
        on_round_end(server_round, arrays)
    return arrays
