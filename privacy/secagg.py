"""Secure aggregation (SecAgg+) for fedsar's Message-API strategies.

With SecAgg+ the coordinator learns only the weighted sum of the sites' shared
parameters, never one site's: each site quantizes its parameters, adds a private mask
and pairwise masks agreed with its neighbours, and the masks cancel (or are removed
with Shamir shares of the masking secrets) once the masked vectors are summed.

What Flower 1.41 offers and what this module adds:

- ``flwr.server.workflow.SecAggPlusWorkflow`` runs the server side only inside the
  legacy ``DefaultWorkflow``: it requires a ``LegacyContext`` and a legacy
  ``flwr.server.strategy.Strategy`` (``configure_fit`` / ``aggregate_fit`` with
  ``ClientProxy``). The Message-API strategies of ``flwr.serverapp.strategy`` (which
  fedsar's FSAR, FedAvg, FedProx, FedBN, FedPer derive from) cannot be driven by it.
- ``flwr.client.mod.secaggplus_mod`` (there is none under ``flwr.clientapp.mod``)
  reads the ClientApp's reply with ``recorddict_to_fitres``: it needs the legacy
  ``fitres.parameters`` / ``fitres.num_examples`` / ``fitres.metrics`` /
  ``fitres.status`` records, not a Message-API reply.

So the site side is Flower's own ``secaggplus_mod`` unchanged, behind a small adapter
(:func:`secaggplus_when_requested`) that turns fedsar's reply into the legacy records;
the server side is :class:`SecAggPlusGrid`, a ``Grid`` that runs the four SecAgg+ stages
(setup, share keys, collect masked vectors, unmask) with Flower's cryptographic
primitives whenever a strategy sends train messages, and hands the strategy one reply
per site carrying the unmasked weighted *average* (identical in every reply) plus that
site's own metrics. Any Message-API strategy whose aggregate is a weighted mean of the
replies (FedAvg, FedProx, FedBN, FedPer, FSAR/FedAvgM) therefore aggregates exactly the
secure average. Strategies that look at individual updates (server-side clipping for
central DP, robust aggregators such as Krum or the trimmed mean) get nothing to look
at: use client-side clipping with central DP.

Caveats (all from the protocol as Flower implements it): values are clipped to
``[-clipping_range, clipping_range]`` before quantization (sites refuse to send a
parameter outside it rather than corrupt the sum); weights are quantized relative to
``max_weight``; masks come from NumPy's generator seeded with 32 bits of each shared
secret; example counts and training metrics still travel in the clear.
"""

from __future__ import annotations

import logging
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.serverapp import Grid

from privacy.run_keys import SECAGG_KEYS

log = logging.getLogger(__name__)

UNIFORM_KEY = "secagg-uniform-weights"  # train-config flag: weigh every site 1 (central DP)
ERROR_CODE = 501


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters (Flower's meaning). ``num_shares`` and ``threshold`` given as
    fractions are of the sampled sites and of the shares."""

    num_shares: float = 1.0
    threshold: float = 2 / 3
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_range: int = 1 << 32
    max_weight: float = 1000.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.num_shares <= 0 or self.threshold <= 0:
            raise ValueError("secagg-num-shares and secagg-threshold must be positive")
        if self.threshold < 1 and not 0 < self.threshold <= 1:
            raise ValueError(f"secagg-threshold {self.threshold} must be in (0, 1] or an integer >= 2")
        if not self.clipping_range > 0 or not self.max_weight > 0:
            raise ValueError("secagg-clipping-range and secagg-max-weight must be positive")
        if self.quantization_range <= 0 or self.modulus_range <= self.quantization_range:
            raise ValueError("secagg-quantization-range must be positive and below the modulus (2**32)")
        if bin(self.modulus_range).count("1") != 1:
            raise ValueError("the SecAgg+ modulus must be a power of two")

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> "SecAggSettings | None":
        """Settings from run-config keys, or None unless ``secagg`` is true."""
        if str(config.get("secagg", "false")).strip().lower() not in ("1", "true", "yes", "on"):
            return None
        try:
            timeout = config.get("secagg-timeout")
            return cls(
                num_shares=float(config.get("secagg-num-shares", 1.0)),
                threshold=float(config.get("secagg-threshold", 2 / 3)),
                clipping_range=float(config.get("secagg-clipping-range", 8.0)),
                quantization_range=int(config.get("secagg-quantization-range", 1 << 22)),
                max_weight=float(config.get("secagg-max-weight", 1000.0)),
                timeout=float(timeout) if timeout not in (None, "") else None,
            )
        except (TypeError, ValueError) as err:
            bad = {k: config.get(k) for k in SECAGG_KEYS if k in config}
            raise ValueError(f"run config: bad secure-aggregation keys {bad}: {err}") from None

    def shares_for(self, sampled: int) -> tuple[int, int]:
        """(number of shares, reconstruction threshold) for ``sampled`` sites (Flower's rules)."""
        if self.num_shares <= 1:
            shares = round(self.num_shares * sampled)
            if shares < sampled and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = sampled
        else:
            shares = int(self.num_shares)
        shares = min(shares, sampled)
        if self.threshold <= 1:
            threshold = max(2, round(self.threshold * shares))
        else:
            threshold = int(self.threshold)
        return shares, min(threshold, shares)


# ------------------------------------------------------------------------------- site

def secaggplus_when_requested(msg: Message, context: Any, call_next: Callable[[Message, Any], Message]) -> Message:
    """Flower's ``secaggplus_mod`` for train messages of a SecAgg+ round; every other
    message passes through unchanged."""
    if not msg.metadata.message_type.startswith(MessageType.TRAIN) or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, _legacy_reply(call_next))


def _legacy_reply(call_next: Callable[[Message, Any], Message]) -> Callable[[Message, Any], Message]:
    """Run the ClientApp on the plain train message and re-pack its reply as the legacy
    ``fitres.*`` records ``secaggplus_mod`` masks."""

    def inner(msg: Message, context: Any) -> Message:
        del msg.content.config_records[RECORD_KEY_CONFIGS]  # the app sees the usual message
        sent = next(iter(msg.content.array_records.values()))
        config = next(iter(msg.content.config_records.values()), ConfigRecord())
        reply = call_next(msg, context)
        if reply.has_error():
            raise RuntimeError(f"secure aggregation: the site's training failed: {reply.error.reason}")
        state = context.state.config_records.get(RECORD_KEY_STATE, {})
        content = legacy_content(reply.content, sent, bool(config.get(UNIFORM_KEY, False)),
                                 float(state.get("clipping_range", 8.0)), float(state.get("max_weight", 1000.0)))
        return Message(content, reply_to=msg)

    return inner


def legacy_content(content: RecordDict, sent: ArrayRecord, uniform: bool, clipping_range: float,
                   max_weight: float) -> RecordDict:
    """A fedsar train reply as ``fitres.*`` records. Refuses (raises) a reply that cannot be
    summed faithfully: other keys or shapes than sent, NaN/Inf, values outside the range."""
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
    if list(arrays.keys()) != list(sent.keys()):
        raise ValueError("secure aggregation: the reply's parameter keys differ from the ones received")
    n = float(metrics.get("num-examples", 0))
    weight = (1.0 if n > 0 else 0.0) if uniform else n
    scale = weight / max_weight
    for key, arr in arrays.items():
        ref = sent[key]
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"secure aggregation: parameter {key!r} has shape {tuple(arr.shape)}, received {tuple(ref.shape)}")
        values = arr.numpy()
        if not np.isfinite(values).all():
            raise ValueError(f"secure aggregation: parameter {key!r} holds NaN or Inf")
        if values.size and float(np.abs(values).max()) * scale > clipping_range:
            raise ValueError(
                f"secure aggregation: parameter {key!r} reaches {float(np.abs(values).max()):.3g} (x weight "
                f"{scale:.3g}), beyond the clipping range {clipping_range}; raise secagg-clipping-range")
    record: dict[str, Any] = {f"metric.{k}": v for k, v in metrics.items()}
    for name, cfg in content.config_records.items():
        record.update({f"{name}.{k}": v for k, v in cfg.items()})
    return RecordDict({
        "fitres.parameters": ArrayRecord(OrderedDict((k, arrays[k]) for k in arrays.keys())),
        "fitres.num_examples": MetricRecord({"num_examples": int(round(weight))}),
        "fitres.metrics": ConfigRecord(record),
        "fitres.status": ConfigRecord({"code": 0, "message": "Success"}),
    })


def _from_legacy(record: ConfigRecord) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    metrics: dict[str, Any] = {}
    configs: dict[str, dict[str, Any]] = {}
    for key, value in record.items():
        group, _, name = key.partition(".")
        if group == "metric":
            metrics[name] = value
        else:
            configs.setdefault(group, {})[name] = value
    return metrics, configs


# ----------------------------------------------------------------------------- server

class SecAggPlusGrid(Grid):
    """A ``Grid`` that answers a strategy's train messages through SecAgg+.

    Every other message (evaluation, queries) goes through the wrapped grid unchanged.
    ``uniform`` weighs every site 1 instead of its example count (for central DP).
    """

    def __init__(self, grid: Grid, settings: SecAggSettings, uniform: bool = False) -> None:
        self.grid = grid
        self.settings = settings
        self.uniform = uniform
        self.rounds: list[dict[str, Any]] = []

    # -- delegation ---------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        secure = messages and all(
            m.metadata.message_type == MessageType.TRAIN and len(m.content.array_records) == 1 for m in messages)
        if not secure:
            return self.grid.send_and_receive(messages, timeout=timeout)
        protocol = SecAggPlusRound(self.grid, self.settings, messages, self.uniform,
                                   self.settings.timeout if self.settings.timeout is not None else timeout)
        replies = protocol.run()
        self.rounds.append(protocol.summary)
        return replies


class SecAggPlusRound:
    """The four SecAgg+ stages for one round's train messages (one per sampled site)."""

    def __init__(self, grid: Grid, settings: SecAggSettings, messages: list[Message], uniform: bool,
                 timeout: float | None) -> None:
        self.grid = grid
        self.settings = settings
        self.uniform = uniform
        self.timeout = timeout
        self.train = {m.metadata.dst_node_id: m for m in messages}
        config = messages[0].content.config_records.get("config") or {}
        self.round = int(config.get("server-round", 0))
        self.group = messages[0].metadata.group_id or str(self.round)
        self.sent = next(iter(messages[0].content.array_records.values()))
        self.failures: dict[int, Message] = {}
        self.summary: dict[str, Any] = {"round": self.round, "sampled": len(messages)}

    # -- plumbing -----------------------------------------------------------------
    def _exchange(self, contents: dict[int, RecordDict]) -> dict[int, Message]:
        """Send one message per node; return the sound replies by node (errors kept aside)."""
        out = [Message(content=c, dst_node_id=nid, message_type=MessageType.TRAIN, group_id=self.group)
               for nid, c in contents.items()]
        good: dict[int, Message] = {}
        for reply in self.grid.send_and_receive(out, timeout=self.timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                self.failures[nid] = reply
            else:
                good[nid] = reply
        return good

    @staticmethod
    def _stage(stage: str, **values: Any) -> RecordDict:
        return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **values})})

    def _halt(self, reason: str) -> list[Message]:
        log.error("secure aggregation of round %s halted: %s", self.group, reason)
        self.summary["halted"] = reason
        return [self._error_reply(m, f"secure aggregation halted: {reason}") for m in self.train.values()]

    def _error_reply(self, sent: Message, reason: str) -> Message:
        failed = self.failures.get(sent.metadata.dst_node_id)
        if failed is not None:
            return failed
        from flwr.app import Metadata

        meta = Metadata(run_id=0, message_id="", src_node_id=sent.metadata.dst_node_id, dst_node_id=0,
                        reply_to_message_id="", group_id=self.group, created_at=0.0, ttl=0.0,
                        message_type=MessageType.TRAIN)
        return Message(error=Error(code=ERROR_CODE, reason=reason), metadata=meta)

    # -- protocol -----------------------------------------------------------------
    def run(self) -> list[Message]:
        from flwr.common import bytes_to_ndarray

        nodes = list(self.train)
        if len(nodes) < 2:
            return self._halt(f"{len(nodes)} site sampled; secure aggregation needs at least 2")
        shares, threshold = self.settings.shares_for(len(nodes))
        random.SystemRandom().shuffle(nodes)
        half = shares // 2
        neighbours = {nid: {nodes[(i + o) % len(nodes)] for o in range(-half, half + 1)} for i, nid in enumerate(nodes)}
        max_weight = 1.0 if self.uniform else self.settings.max_weight
        self.summary.update(shares=shares, threshold=threshold, max_weight=max_weight)

        # Stage 0: configuration out, two public keys per site back.
        setup = {Key.SAMPLE_NUMBER: len(nodes), Key.SHARE_NUMBER: shares, Key.THRESHOLD: threshold,
                 Key.CLIPPING_RANGE: float(self.settings.clipping_range),
                 Key.TARGET_RANGE: int(self.settings.quantization_range),
                 Key.MOD_RANGE: int(self.settings.modulus_range), Key.MAX_WEIGHT: float(max_weight)}
        replies = self._exchange({nid: self._stage(Stage.SETUP, **setup) for nid in nodes})  # one record each:
        # the site's mod pops the stage key from the record it receives
        keys: dict[int, list[bytes]] = {}
        for nid, reply in replies.items():
            cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
            keys[nid] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]  # type: ignore[list-item]
        active = set(keys)
        if (problem := self._short(neighbours, active, threshold)) is not None:
            return self._halt(f"after setup: {problem}")

        # Stage 1: public keys to neighbours, encrypted key shares back.
        contents = {}
        for nid in active:
            record = {str(other): keys[other] for other in neighbours[nid] & active}
            contents[nid] = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({**record, Key.STAGE: Stage.SHARE_KEYS})})
        replies = self._exchange(contents)
        shared = set(replies)
        forward: dict[int, tuple[list[int], list[bytes]]] = {nid: ([], []) for nid in shared}
        for src, reply in replies.items():
            cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
            for dst, ctxt in zip(cfg[Key.DESTINATION_LIST], cfg[Key.CIPHERTEXT_LIST], strict=True):  # type: ignore[arg-type]
                if dst in forward:
                    forward[dst][0].append(src)
                    forward[dst][1].append(ctxt)
        if (problem := self._short(neighbours, shared, threshold)) is not None:
            return self._halt(f"after sharing keys: {problem}")

        # Stage 2: the train message plus the shares addressed to the site; masked vector back.
        contents = {}
        for nid in shared:
            content = RecordDict(dict(self.train[nid].content.items()))
            content[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                                                        Key.SOURCE_LIST: forward[nid][0],
                                                        Key.CIPHERTEXT_LIST: forward[nid][1]})
            contents[nid] = content
        replies = self._exchange(contents)
        shapes = [(1,)] + [tuple(a.shape) for a in self.sent.values()]
        masked: dict[int, list[np.ndarray]] = {}
        for nid, reply in replies.items():
            vector = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]  # type: ignore[union-attr]
            if [tuple(v.shape) for v in vector] != shapes:
                self.failures[nid] = self._error_reply(self.train[nid], "masked vector of the wrong shape")
                continue
            masked[nid] = vector
        collected = replies
        survivors = set(masked)
        dead = shared - survivors
        if (problem := self._short(neighbours, survivors, threshold, only=shared)) is not None:
            return self._halt(f"after collecting masked vectors: {problem}")

        # Stage 3: who survived; shares of the survivors' mask seeds and the dropped sites' keys back.
        contents = {
            nid: self._stage(Stage.UNMASK, **{Key.ACTIVE_NODE_ID_LIST: sorted(neighbours[nid] & survivors),
                                             Key.DEAD_NODE_ID_LIST: sorted(neighbours[nid] & dead)})
            for nid in survivors
        }
        replies = self._exchange(contents)
        collected_shares: dict[int, list[bytes]] = {nid: [] for nid in survivors | dead}
        for reply in replies.values():
            cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(cfg[Key.NODE_ID_LIST], cfg[Key.SHARE_LIST], strict=True):  # type: ignore[arg-type]
                if owner in collected_shares:
                    collected_shares[owner].append(share)
        try:
            average = self._unmask(masked, survivors, dead, collected_shares, keys, neighbours, threshold)
        except ValueError as err:
            return self._halt(str(err))
        self.summary.update(contributors=len(survivors), dropped=len(self.train) - len(survivors))
        return self._replies(collected, survivors, average)

    @staticmethod
    def _short(neighbours: dict[int, set[int]], alive: set[int], threshold: int, only: set[int] | None = None) -> str | None:
        for nid in (only if only is not None else alive):
            if len(neighbours[nid] & alive) < threshold:
                return f"site {nid} has {len(neighbours[nid] & alive)} live neighbours, fewer than the threshold {threshold}"
        return None

    def _unmask(self, masked: dict[int, list[np.ndarray]], survivors: set[int], dead: set[int],
                shares: dict[int, list[bytes]], keys: dict[int, list[bytes]], neighbours: dict[int, set[int]],
                threshold: int) -> list[np.ndarray] | None:
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_extract, parameters_addition, parameters_mod, parameters_subtraction)
        from flwr.common.secure_aggregation.quantization import dequantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

        mod = self.settings.modulus_range
        total: list[np.ndarray] | None = None
        for vector in masked.values():
            total = vector if total is None else parameters_addition(total, vector)
        assert total is not None
        total = parameters_mod(total, mod)
        dims = [a.shape for a in total]
        for nid in sorted(survivors | dead):
            if len(shares[nid]) < threshold:
                raise ValueError(f"only {len(shares[nid])} shares of site {nid}'s secret, threshold {threshold}")
            secret = combine_shares(shares[nid])
            if nid in survivors:  # remove its private mask
                total = parameters_subtraction(total, pseudo_rand_gen(secret, mod, dims))
                continue
            for other in sorted((neighbours[nid] - {nid}) & survivors):  # undo its pairwise masks
                key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(keys[other][0]))
                mask = pseudo_rand_gen(key, mod, dims)
                total = parameters_addition(total, mask) if nid > other else parameters_subtraction(total, mask)
        total = parameters_mod(total, mod)
        weight_sum, params = factor_extract(total)
        if int(weight_sum) == 0:
            return None  # every survivor declined (weight 0): nothing to average
        values = dequantize(params, self.settings.clipping_range, self.settings.quantization_range)
        offset = -(len(survivors) - 1) * self.settings.clipping_range
        scale = self.settings.quantization_range / float(weight_sum)
        return [(v + offset) * scale for v in values]

    def _replies(self, collected: dict[int, Message], survivors: set[int], average: list[np.ndarray] | None) -> list[Message]:
        """One reply per sampled site for the strategy: the secure average as the site's
        arrays (the strategy's weighted mean of identical arrays is that average) and the
        site's own metrics; failed sites keep their error replies."""
        out: list[Message] = []
        for nid, sent in self.train.items():
            if nid not in survivors:
                out.append(self._error_reply(sent, "dropped out of secure aggregation"))
                continue
            reply = collected[nid]
            metrics, configs = _from_legacy(reply.content.config_records["fitres.metrics"])
            if average is None:
                arrays = self.sent
            else:
                arrays = ArrayRecord(OrderedDict(
                    (k, Array(np.asarray(v, dtype=ref.numpy().dtype))) for (k, ref), v in zip(self.sent.items(), average, strict=True)))
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
            for name, values in configs.items():
                content[name] = ConfigRecord(values)
            out.append(Message(content=content, metadata=reply.metadata))
        return out
