"""Central (user-level) differential privacy on the coordinator, with its accountant.

On top of (or instead of) the sites' own DP-SGD, a federation can protect whole sites:
each site's update is clipped to norm ``C`` (on the server, or on the site with Flower's
``fixedclipping_mod``), the updates are averaged with equal weights and Gaussian noise
of standard deviation ``z * C / n`` is added to the average (Flower's
``DifferentialPrivacyServerSideFixedClipping`` / ``...ClientSideFixedClipping``). Each
round is then a Gaussian mechanism with noise multiplier ``z`` on the sum of ``n``
clipped updates; Opacus's RDP accountant composes the rounds.

Run-config keys: ``central-dp-noise`` (``z``; setting it turns central DP on),
``central-dp-clip`` (``C``), ``central-dp-clipping`` (``server`` or ``client``) and
``central-dp-delta``.

What the accountant assumes (and the wrapper enforces):

- equal weights: FedAvg's weighting by example counts would let a large site move the
  average by more than ``C / n``, so the average here is unweighted;
- no amplification by sampling: Flower samples a fixed number of sites without
  replacement, not Poisson; every round counts as a full-participation release;
- fewer contributors than sampled (a site failed or declined) raise the sensitivity to
  ``C / n_actual`` while the noise stays ``z * C / n``: that round is accounted with the
  effective multiplier ``z * n_actual / n``;
- the server learning rate is 1 (FedAvg, FSAR/FedAvgM without momentum keep the noisy
  average as the new model); momentum is post-processing of released averages only
  when it is applied to them, which it is here.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from privacy.run_keys import CENTRAL_KEYS
from skeletons.clikit import counted

log = logging.getLogger(__name__)

CLIPPING_SIDES = ("server", "client")
WEIGHT_KEY = "central-dp-weight"  # equal weight injected into every reply before averaging


@dataclass(frozen=True)
class CentralDPSettings:
    noise_multiplier: float
    clipping_norm: float
    clipping: str = "server"
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"central-dp-noise must be positive, got {self.noise_multiplier}")
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ValueError(f"central-dp-clip must be positive, got {self.clipping_norm}")
        if self.clipping not in CLIPPING_SIDES:
            raise ValueError(f"central-dp-clipping {self.clipping!r} unknown; choose from {', '.join(CLIPPING_SIDES)}")
        if not 0 < self.delta < 1:
            raise ValueError(f"central-dp-delta must be in (0, 1), got {self.delta}")

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> "CentralDPSettings | None":
        """Settings from run-config keys, or None when ``central-dp-noise`` is absent/off."""
        raw = config.get("central-dp-noise")
        if raw is None or str(raw).strip().lower() in ("", "0", "0.0", "off", "none"):
            return None
        try:
            noise = float(raw)
            clip = float(config.get("central-dp-clip", 1.0))
            delta = float(config.get("central-dp-delta", 1e-5))
        except (TypeError, ValueError):
            bad = {k: config.get(k) for k in CENTRAL_KEYS if k in config}
            raise ValueError(f"run config: central DP keys must be numbers, got {bad}") from None
        return cls(noise, clip, str(config.get("central-dp-clipping", "server")).strip().lower(), delta)


def central_epsilon(noise_multiplier: float, rounds: int, sample_rate: float = 1.0, delta: float = 1e-5) -> float:
    """Epsilon of ``rounds`` Gaussian releases with ``noise_multiplier`` (RDP accountant);
    ``sample_rate`` below 1 assumes Poisson sampling of sites (a planning figure)."""
    return epsilon_of_history([(noise_multiplier, sample_rate, rounds)], delta)


def epsilon_of_history(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    if not history or not any(h[2] for h in history):
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history if h[2] > 0]
    return float(accountant.get_epsilon(delta=delta))


class _Accounted:
    """What both wrappers add to Flower's: equal weights, contributor-aware accounting and
    an optional on-disk record that survives a coordinator restart."""

    strategy: Strategy
    noise_multiplier: float
    num_sampled_clients: int

    def _init_accounting(self, delta: float, record_path: Path | None, resume: bool) -> None:
        """Releases go to ``record_path``; a resumed run starts from the ones it holds
        (made before a crash), a new run from none."""
        self.delta = delta
        self.record_path = record_path
        self.releases: list[dict[str, Any]] = []
        if resume and record_path is not None and record_path.is_file():
            import json

            self.releases = list(json.loads(record_path.read_text()).get("releases", []))

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(r["noise_multiplier"], 1.0, 1) for r in self.releases]

    @property
    def epsilon(self) -> float:
        return epsilon_of_history(self.history, self.delta)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self.num_sampled_clients = max(1, len(messages))  # the noise scales with who was asked
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                for record in msg.content.metric_records.values():
                    record[WEIGHT_KEY] = 1.0
        inner = self.strategy
        weighted_by = getattr(inner, "weighted_by_key", None)
        if weighted_by is not None:
            inner.weighted_by_key = WEIGHT_KEY  # type: ignore[attr-defined]
        try:
            arrays, metrics = self._clip_and_average(server_round, replies)
        finally:
            if weighted_by is not None:
                inner.weighted_by_key = weighted_by  # type: ignore[attr-defined]
        if arrays is not None:
            self._account(server_round, self._contributors(server_round, replies))
        return arrays, metrics

    def _clip_and_average(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def _contributors(self, server_round: int, replies: list[Message]) -> int:
        record_for = getattr(self.strategy, "record_for", None)
        if callable(record_for):
            return int(record_for(server_round).sites_ok)
        return sum(1 for m in replies if not m.has_error())

    def _account(self, server_round: int, contributors: int) -> None:
        sampled = self.num_sampled_clients
        effective = self.noise_multiplier * min(1.0, contributors / sampled) if contributors else self.noise_multiplier
        if contributors < sampled:
            log.warning("round %d: %d of %d sampled sites contributed; central DP noise multiplier is effectively %.4f",
                        server_round, contributors, sampled, effective)
        self.releases.append({"round": int(server_round), "sampled": sampled, "contributors": int(contributors),
                              "noise_multiplier": float(effective)})
        epsilon = self.epsilon
        self.releases[-1]["epsilon"] = epsilon
        log.info("round %d: central DP epsilon %.4f at delta %g after %s",
                 server_round, epsilon, self.delta, counted(len(self.releases), "release"))
        if self.record_path is not None:
            from skeletons.atomic import write_json

            write_json(self.record_path, self.report())

    def report(self) -> dict[str, Any]:
        return {
            "mechanism": "central-gaussian", "accountant": "rdp", "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm, "delta": self.delta, "epsilon": self.epsilon,  # type: ignore[attr-defined]
            "releases": self.releases,
        }


class CentralDPServerSide(_Accounted, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping with equal weights and the accountant above.

    Flower's clipping divides by the update's norm, so a reply that changes nothing (a
    site declining the round sends the global model back) would stop the round; such
    replies pass unclipped (clipping leaves them unchanged anyway), the others are
    clipped with Flower's ``compute_clip_model_update`` before the noisy average.
    """

    def __init__(self, strategy: Strategy, settings: CentralDPSettings, num_sampled: int,
                 record_path: Path | None = None, resume: bool = False) -> None:
        DifferentialPrivacyServerSideFixedClipping.__init__(
            self, strategy, settings.noise_multiplier, settings.clipping_norm, num_sampled)
        self._init_accounting(settings.delta, record_path, resume)

    def _clip_and_average(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import Array
        from flwr.supercore.differential_privacy import compute_clip_model_update

        current = self.current_arrays.to_numpy_ndarrays()
        for msg in replies:
            if msg.has_error():
                continue
            for name, record in list(msg.content.array_records.items()):
                values = record.to_numpy_ndarrays()
                if len(values) != len(current) or not any(np.any(v != c) for v, c in zip(values, current)):
                    continue  # malformed (screening drops it) or no change (nothing to clip)
                compute_clip_model_update(param1=values, param2=current, clipping_norm=self.clipping_norm)
                msg.content[name] = ArrayRecord(OrderedDict(
                    (k, Array(np.asarray(v))) for k, v in zip(record.keys(), values, strict=True)))
        # the rest is the client-side wrapper's path: average, then Gaussian noise
        return DifferentialPrivacyClientSideFixedClipping.aggregate_train(self, server_round, replies)  # type: ignore[arg-type]


class CentralDPClientSide(_Accounted, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping (sites clip with ``fixedclipping_mod``)."""

    def __init__(self, strategy: Strategy, settings: CentralDPSettings, num_sampled: int,
                 record_path: Path | None = None, resume: bool = False) -> None:
        DifferentialPrivacyClientSideFixedClipping.__init__(
            self, strategy, settings.noise_multiplier, settings.clipping_norm, num_sampled)
        self._init_accounting(settings.delta, record_path, resume)


def wrap_central_dp(strategy: Strategy, settings: CentralDPSettings, num_sites: int, fraction_train: float = 1.0,
                    record_path: Path | None = None, resume: bool = False) -> Strategy:
    """``strategy`` wrapped for central DP (its replies screened and recorded as before);
    with ``resume`` the releases already in ``record_path`` count."""
    num_sampled = max(1, int(num_sites * fraction_train))
    cls = CentralDPServerSide if settings.clipping == "server" else CentralDPClientSide
    return cls(strategy, settings, num_sampled, record_path, resume)


class _Unchanged(Exception):
    def __init__(self, reply: Message) -> None:
        super().__init__("reply without an update")
        self.reply = reply


def clipping_when_requested(msg: Message, context: Any, call_next: Any) -> Message:
    """Flower's ``fixedclipping_mod`` for train messages whose config carries a clipping
    norm (client-side central DP); every other message passes through unchanged, and so
    does a reply that changes nothing (a declined round), which Flower's clipping cannot
    take (it divides by the update's norm)."""
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    config = msg.content.config_records.get("config") if msg.metadata.message_type.startswith("train") else None
    if config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    sent = [a.numpy() for rec in msg.content.array_records.values() for a in rec.values()]

    def app(m: Message, c: Any) -> Message:
        out = call_next(m, c)
        if not out.has_error():
            got = [a.numpy() for rec in out.content.array_records.values() for a in rec.values()]
            if len(got) == len(sent) and all(g.shape == s.shape and np.array_equal(g, s) for g, s in zip(got, sent)):
                raise _Unchanged(out)
        return out

    try:
        return fixedclipping_mod(msg, context, app)
    except _Unchanged as same:
        return same.reply
