"""The coordinator's privacy options, from the run config, in one place.

``run_federation`` asks :func:`coordinator_privacy` once per run and gets back what the
round loop should drive: the strategy (wrapped for central DP when asked), the grid
(answering train messages through SecAgg+ when asked) and the keys the sites need in
their train config (their DP-SGD settings and the planned number of rounds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from privacy.central import CentralDPSettings, wrap_central_dp
from privacy.dp import RUN_KEYS, run_config_keys
from privacy.secagg import UNIFORM_KEY, SecAggPlusGrid, SecAggSettings

log = logging.getLogger(__name__)


@dataclass
class CoordinatorPrivacy:
    base: Strategy  # the screened strategy (its history holds every site's reply metrics)
    strategy: Strategy  # what the round loop drives
    grid: Grid
    train_keys: dict[str, Any] = field(default_factory=dict)
    central: Any = None
    secagg: SecAggPlusGrid | None = None

    def report(self) -> dict[str, Any]:
        """What the results file says about privacy at the coordinator and the sites."""
        return {
            "site_dp": {k: v for k, v in self.train_keys.items() if k in RUN_KEYS},
            "sites": site_epsilons(getattr(self.base, "history", [])),
            "central_dp": self.central.report() if self.central is not None else None,
            "secure_aggregation": {"rounds": self.secagg.rounds} if self.secagg is not None else None,
        }


def coordinator_privacy(strategy: Strategy, grid: Grid, run_config: Mapping[str, Any], *, num_rounds: int,
                        num_sites: int, fraction_train: float = 1.0, out_dir: Path | None = None,
                        resume: bool = False) -> CoordinatorPrivacy:
    """Wrap ``strategy`` and ``grid`` as the run config's privacy keys ask; errors name the key.

    The central-DP releases are recorded in ``out_dir/central-dp.json``; a resumed run
    goes on from the record (releases made before a crash still count), a new run in the
    same folder starts its own."""
    train_keys = run_config_keys(run_config, num_rounds)
    central = CentralDPSettings.from_run_config(run_config)
    secure = SecAggSettings.from_run_config(run_config)
    aggregates = bool(getattr(strategy, "sends_arrays", lambda: True)())
    if central is not None and not aggregates:
        raise ValueError("run config: central DP (central-dp-noise) needs a strategy that aggregates, not 'local'")
    if secure is not None and central is not None and central.clipping == "server":
        raise ValueError("run config: with secagg = true the server sees only the sum and cannot clip each site; "
                         "set central-dp-clipping = 'client'")
    out = CoordinatorPrivacy(base=strategy, strategy=strategy, grid=grid, train_keys=train_keys)
    if central is not None:
        record = out_dir / "central-dp.json" if out_dir is not None else None
        out.central = out.strategy = wrap_central_dp(strategy, central, num_sites, fraction_train, record, resume)
        log.info("central DP: noise multiplier %g, clipping norm %g (%s side), delta %g",
                 central.noise_multiplier, central.clipping_norm, central.clipping, central.delta)
    if secure is not None:
        if not aggregates:
            log.warning("secagg requested, but strategy 'local' sends nothing to aggregate; ignored")
        else:
            out.secagg = out.grid = SecAggPlusGrid(grid, secure, uniform=central is not None)
            train_keys[UNIFORM_KEY] = central is not None
            log.info("secure aggregation (SecAgg+): the coordinator sees only the sum of the sites' parameters")
    return out


def site_epsilons(history: Any) -> dict[str, dict[str, float]]:
    """Per site: the last epsilon it reported (in a reply it trained or declined with),
    whether it trained with DP-SGD, and how many rounds it declined (from the screened
    replies of every round)."""
    sites: dict[str, dict[str, float]] = {}
    for record in history:
        for site, metrics in getattr(record, "train", {}).items():
            entry = sites.setdefault(site, {"epsilon": 0.0, "dp": 0.0, "declined_rounds": 0})
            entry["epsilon"] = float(metrics.get("privacy-epsilon", entry["epsilon"]))
            entry["dp"] = float(metrics.get("privacy-dp", entry["dp"]))
        for site, metrics in getattr(record, "declined", {}).items():  # a declining site still reports its spend
            entry = sites.setdefault(site, {"epsilon": 0.0, "dp": 1.0, "declined_rounds": 0})
            entry["epsilon"] = float(metrics.get("privacy-epsilon", entry["epsilon"]))
            entry["declined_rounds"] += 1
    return sites


def check_run_config(config: Mapping[str, Any]) -> dict[str, bool]:
    """Fail early, naming the key, on privacy settings a run could not start with; return
    which coordinator-side options the run turns on (as :meth:`CoordinatorPrivacy.report`
    names them), for the checks of options that do not combine with them."""
    from privacy.dp import DPSettings

    DPSettings.resolve((config, "run config"))
    central = CentralDPSettings.from_run_config(config)
    secure = SecAggSettings.from_run_config(config)
    if central is not None and secure is not None and central.clipping == "server":
        raise ValueError("run config: with secagg = true the server sees only the sum and cannot clip each site; "
                         "set central-dp-clipping = 'client'")
    return {"central_dp": central is not None, "secure_aggregation": secure is not None}
