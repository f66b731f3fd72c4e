"""Strategies by name: the server-side aggregator and the recipe its sites follow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp.strategy import Strategy

STRATEGY_NAMES = ("fsar", "fedavg", "fedprox", "fedbn", "fedper", "local")


@dataclass
class StrategyOptions:
    """Knobs of the strategies; each strategy reads the ones it needs."""

    mu: float = 0.01  # proximal term (fsar, fedprox)
    mkd: bool = True  # multi-grain distillation (fsar)
    grains: str = "1,2"  # comma-separated block indices the teacher's features come from
    lambda_mg: float = 0.5
    lambda_kd: float = 0.5
    temperature: float = 2.0
    server_momentum: float = 0.0
    server_learning_rate: float = 1.0
    shared_label_set: bool = False  # all sites have the same classes: one head can be shared
    share_head: bool = False  # fsar: average the head too (needs shared_label_set)
    personal_norms: bool = False  # fsar: keep the normalization layers' parameters on the sites
    shared_blocks: int = 0  # 0: every block may be shared; k: deeper blocks stay personal
    extra: dict[str, Any] = field(default_factory=dict)


def client_policy(name: str, shared_label_set: bool, share_head: bool = False, personal_norms: bool = False) -> str:
    """Which parameters stay personal on the site under strategy ``name`` (see models.roles).

    ``share_head`` (fsar only) averages the classifier head as well, for sites that share
    one label set; FSAR as published keeps it on each site. ``personal_norms`` (fsar only)
    keeps the normalization layers' parameters on each site, as FedBN does for FedAvg."""
    if share_head or personal_norms:  # fsar's own variants, named after the options taken
        if share_head:
            check_share_head(name, shared_label_set)
        if personal_norms:
            check_personal_norms(name)
        return "fsar" + ("-shared-head" if share_head else "") + ("-personal-norms" if personal_norms else "")
    if name in ("fedavg", "fedprox"):
        return "fedavg" if shared_label_set else "fedavg-local-heads"
    if name == "fedbn" and not shared_label_set:
        return "fedbn-local-heads"
    return name


def check_share_head(name: str, shared_label_set: bool) -> None:
    """``share-head`` only where it means something: fsar, over sites with one label set."""
    if name != "fsar":
        raise ValueError(f"run config 'share-head' applies to fsar only, not {name!r} (fedavg, fedprox and "
                         "fedbn share the head whenever the sites share one label set)")
    if not shared_label_set:
        raise ValueError("run config 'share-head' needs sites with one label set; this scenario's sites "
                         "read different data sets or class counts, so each keeps its own head")


def check_personal_norms(name: str) -> None:
    """``personal-norms`` is fsar's option; FedAvg with personal norms is ``fedbn``."""
    if name != "fsar":
        raise ValueError(f"run config 'personal-norms' applies to fsar only, not {name!r} "
                         "(fedbn is fedavg with the normalization layers kept on the sites)")


def build_strategy(
    name: str,
    options: StrategyOptions,
    *,
    eval_every: int,
    num_rounds: int,
    num_sites: int,
    fraction_train: float = 1.0,
    min_sites: int | None = None,
    lr_schedule: str = "constant",
) -> Strategy:
    """Instantiate the named strategy with reply screening and its site recipe.

    ``lr_schedule`` scales the sites' learning rate per round (see
    :func:`strategies.screening.round_lr_factor`)."""
    from strategies.screening import check_lr_schedule

    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    strategy = _build(name, options, num_sites, fraction_train, min_sites, eval_every, num_rounds)
    strategy.lr_schedule = check_lr_schedule(lr_schedule)  # type: ignore[attr-defined]
    return strategy


def _build(
    name: str, options: StrategyOptions, num_sites: int, fraction_train: float, min_sites: int | None,
    eval_every: int, num_rounds: int,
) -> Strategy:
    from models.roles import check_shared_blocks
    from strategies.baselines import LocalOnly, ScreenedFedAvg, ScreenedFedProx
    from strategies.fsar import FSAR

    minimum = min_sites if min_sites is not None else num_sites
    common: dict[str, Any] = dict(
        eval_every=eval_every,
        num_rounds=num_rounds,
        fraction_train=fraction_train,
        min_train_nodes=min(minimum, num_sites),
        min_evaluate_nodes=min(minimum, num_sites),
        min_available_nodes=min(minimum, num_sites),
    )
    config: dict[str, Any] = {
        "strategy": name,
        "policy": client_policy(name, options.shared_label_set, options.share_head, options.personal_norms),
        "shared-blocks": check_shared_blocks(options.shared_blocks),
        "mkd": False,
        "mu": 0.0,
    }
    if name == "fsar":
        config.update(
            mkd=bool(options.mkd), mu=float(options.mu), grains=options.grains,
            lambda_mg=float(options.lambda_mg), lambda_kd=float(options.lambda_kd),
            temperature=float(options.temperature),
        )
        return FSAR(
            client_config=config,
            server_learning_rate=options.server_learning_rate,
            server_momentum=options.server_momentum,
            **common,
        )
    if name == "fedprox":
        config["mu"] = float(options.mu)
        return ScreenedFedProx(client_config=config, proximal_mu=float(options.mu), **common)
    if name == "local":
        return LocalOnly(client_config=config, **common)
    return ScreenedFedAvg(client_config=config, **common)
