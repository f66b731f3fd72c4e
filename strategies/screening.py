"""Reply screening and round bookkeeping shared by every fedsar strategy.

A site whose reply is malformed (missing or extra keys, wrong shapes, NaN or Inf, no
example count) is dropped from the round with a logged reason, so one broken or
hostile site cannot poison the average or stop the round. The same mixin records what
each round cost (wall time, the sites' compute time, uplink bytes) and each site's
metrics, which the server writes to results and checkpoints.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from models.label_groups import PEERS_KEY, SITE_KEY, for_group, group_of, is_group_key

log = logging.getLogger(__name__)

NUM_EXAMPLES = "num-examples"
LR_SCHEDULES = ("constant", "cosine")


def check_lr_schedule(schedule: str) -> str:
    """``schedule`` if known, else a ValueError naming the run-config key."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"run config 'lr-schedule' {schedule!r} unknown; choose from {', '.join(LR_SCHEDULES)}")
    return schedule


def round_lr_factor(server_round: int, num_rounds: int, schedule: str) -> float:
    """Multiplier of the sites' learning rate in ``server_round`` (1-based).

    ``cosine`` decays it over the run, from 1 in round 1 towards 0 after the last
    round: late rounds move the shared parameters less, so the sites' models drift
    apart less between averages. The last round keeps a small positive rate.
    """
    if check_lr_schedule(schedule) == "constant" or num_rounds <= 1:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (server_round - 1) / num_rounds))


@dataclass
class RoundRecord:
    """What one round cost and what each site reported."""

    round: int
    wall_s: float = 0.0
    compute_s: float = 0.0
    compute_max_s: float = 0.0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    sites_asked: int = 0  # train messages sent out this round
    sites_ok: int = 0
    sites_failed: int = 0  # asked but dropped, errored or silent until the round's timeout
    dropped: list[str] = field(default_factory=list)
    received_keys: list[str] = field(default_factory=list)  # parameter names that left the sites
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    # the metrics of sites that declined the round (their epsilon spent so far among them)
    declined: dict[str, dict[str, float]] = field(default_factory=dict)

    def progress_line(self, num_rounds: int) -> str:
        """One round's line (``fedsar-sim`` prints it, a ServerApp under ``flwr run`` logs
        it); its means are taken as results.json takes them (``fmean``), so the last line
        and the final table print the same digits."""
        accs = [m["eval-accuracy"] for m in self.evaluate.values() if "eval-accuracy" in m]
        acc = f"mean site acc {100 * statistics.fmean(accs):5.1f}%" if accs else "(no evaluation)     "
        trained = [m["trained-accuracy"] for m in self.train.values() if "trained-accuracy" in m]
        if trained:
            acc += f" (after local training {100 * statistics.fmean(trained):5.1f}%)"
        dropped = f"  dropped {len(self.dropped)}" if self.dropped else ""
        return (
            f"round {self.round:>3}/{num_rounds}  {acc}  wall {self.wall_s:6.1f}s  "
            f"compute {self.compute_s:6.1f}s  uplink {self.uplink_bytes / 1e6:6.2f} MB{dropped}"
        )


def reply_metrics(msg: Message) -> dict[str, float]:
    """The numeric metrics of a screened reply (which carries one MetricRecord)."""
    metrics = next(iter(msg.content.metric_records.values()))
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def site_label(msg: Message) -> str:
    """The site's name from its reply's ``site`` record, or else its node id."""
    if not msg.has_content():  # an error reply (node unavailable, ClientApp exception)
        return f"node-{msg.metadata.src_node_id}"
    content = msg.content
    for record in content.config_records.values():
        if "site-name" in record:
            return str(record["site-name"])
    return f"node-{msg.metadata.src_node_id}"


def in_site_order(replies: Iterable[Message]) -> list[Message]:
    """``replies`` sorted by site name, then node id. Replies arrive in whatever order the
    sites finish, and a float sum depends on its order: adding them up in a fixed order
    makes a seeded run give the same parameters every time."""
    return sorted(replies, key=lambda m: (site_label(m), m.metadata.src_node_id))


def arrays_nbytes(arrays: ArrayRecord) -> int:
    return int(sum(len(a.data) for a in arrays.values()))


def reply_problem(msg: Message, expected: ArrayRecord | None, need_arrays: bool, group_heads: bool = False) -> str | None:
    """Why a reply cannot be aggregated, or None when it is sound. With ``group_heads`` a
    reply may also carry its label group's head (models.label_groups), which need not be
    in ``expected`` (a group's first round) and is checked against it where it is."""
    if msg.has_error():
        return f"site reported an error: {msg.error.reason}"
    content = msg.content
    metrics = list(content.metric_records.values())
    if len(metrics) != 1:
        return f"expected one MetricRecord, got {len(metrics)}"
    n = metrics[0].get(NUM_EXAMPLES)
    for record in content.config_records.values():  # e.g. a site whose privacy budget is spent
        if "declined" in record and not n:
            return f"declined the round: {record['declined']}"
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        return f"bad {NUM_EXAMPLES!r}: {n!r}"
    for key, value in metrics[0].items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f"metric {key!r} is not finite"
    if not need_arrays:
        return None
    records = list(content.array_records.values())
    if len(records) != 1:
        return f"expected one ArrayRecord, got {len(records)}"
    arrays = records[0]
    if expected is not None:
        grouped = {k for k in set(arrays.keys()) | set(expected.keys()) if group_heads and is_group_key(k)}
        missing = set(expected.keys()) - set(arrays.keys()) - grouped
        extra = set(arrays.keys()) - set(expected.keys()) - grouped
        if missing or extra:
            return f"parameter keys differ (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})"
        for key, ref in expected.items():
            if key not in arrays:  # another label group's head
                continue
            got = arrays[key]
            if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
                return f"parameter {key!r} is {got.dtype}{tuple(got.shape)}, expected {ref.dtype}{tuple(ref.shape)}"
    for key, arr in arrays.items():
        if not np.isfinite(arr.numpy()).all():
            return f"parameter {key!r} holds NaN or Inf"
    return None


def keep_unanimous(averaged: ArrayRecord, replies: list[Message]) -> ArrayRecord:
    """``averaged`` with every array that all ``replies`` sent bit for bit the same set to
    that value: a weighted average of equal float32 values is that value, but computing it
    rounds in the last bits. So parameters every site left untrained (``frozen-blocks``)
    stay exactly as the warm start brought them, and a site can tell they did not change
    (client.frozen_trunk reuses its cached rows)."""
    records = [next(iter(msg.content.array_records.values()), None) for msg in replies]
    if not records or any(r is None for r in records):
        return averaged
    out = OrderedDict()
    for key, value in averaged.items():
        first, *rest = (r.get(key) for r in records)
        same = first is not None and all(
            a is not None and (a.dtype, a.shape, a.data) == (first.dtype, first.shape, first.data) for a in rest)
        out[key] = first if same else value
    return ArrayRecord(out)


def average_group_heads(replies: list[Message], weight_key: str) -> dict[str, Array]:
    """Each label group's head keys averaged, with Flower's weighted average, over the
    replies that carry them (a reply carries its own group's keys only)."""
    groups: dict[tuple[str, ...], list[RecordDict]] = {}
    for msg in replies:
        arrays = next(iter(msg.content.array_records.values()))
        heads = ArrayRecord(OrderedDict((k, v) for k, v in arrays.items() if is_group_key(k)))
        if heads:
            metrics = next(iter(msg.content.metric_records.values()))
            groups.setdefault(tuple(sorted(heads.keys())), []).append(RecordDict({"arrays": heads, "metrics": metrics}))
    averaged: dict[str, Array] = {}
    for records in groups.values():
        averaged.update(aggregate_arrayrecords(records, weight_key).items())
    return dict(sorted(averaged.items()))


class ScreenedRounds:
    """Mixin for a Flower ``Strategy``: screens replies and records each round.

    Place it before the Flower strategy in the bases, e.g.
    ``class Screened(ScreenedRounds, FedAvg)``. ``client_config`` is merged into every
    train message's config so that sites know the strategy's local recipe.
    """

    client_config: dict[str, Any]
    history: list[RoundRecord]
    eval_every: int = 1
    num_rounds: int = 0
    lr_schedule: str = "constant"  # of the sites' learning rate over rounds
    group_heads: bool = False  # sites with one label set average their heads (models.label_groups)

    def init_rounds(self, client_config: dict[str, Any] | None = None, eval_every: int = 1, num_rounds: int = 0) -> None:
        self.client_config = dict(client_config or {})
        self.history = []
        self.eval_every = max(1, int(eval_every))
        self.num_rounds = num_rounds
        self._expected: ArrayRecord | None = None
        self._round_started = 0.0
        self._node_groups: dict[int, str] = {}  # under group-heads: each replying node's label group
        self._site_groups: dict[str, str] = {}  # and each site's, by name (a restarted site has a new node id)

    def record_for(self, server_round: int) -> RoundRecord:
        if not self.history or self.history[-1].round != server_round:
            self.history.append(RoundRecord(round=server_round))
        return self.history[-1]

    # -- training ------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        self._round_started = time.perf_counter()
        self._expected = arrays
        for key, value in self.client_config.items():
            config[key] = value
        if "learning-rate" in config:
            factor = round_lr_factor(server_round, self.num_rounds, self.lr_schedule)
            config["learning-rate"] = float(config["learning-rate"]) * factor
        messages = self.own_group_heads_only(list(super().configure_train(server_round, arrays, config, grid)))  # type: ignore[misc]
        record = self.record_for(server_round)
        key = self.arrayrecord_key  # type: ignore[attr-defined]
        record.downlink_bytes = sum(arrays_nbytes(m.content.array_records.get(key, ArrayRecord())) for m in messages)
        record.sites_asked = len(messages)
        return messages

    def screen(self, server_round: int, replies: Iterable[Message], need_arrays: bool) -> list[Message]:
        record = self.record_for(server_round)
        good = []
        for msg in replies:
            if not msg.has_error():
                for arrays in msg.content.array_records.values():
                    record.uplink_bytes += arrays_nbytes(arrays)
                    record.received_keys = sorted(set(record.received_keys) | set(arrays.keys()))
            problem = reply_problem(msg, self._expected if need_arrays else None, need_arrays, self.group_heads)
            if problem is None:
                good.append(msg)
                self.learn_group(msg)
            else:
                reason = f"{site_label(msg)}: {problem}"
                log.warning("round %d: dropped reply from %s", server_round, reason)
                record.dropped.append(reason)
                if problem.startswith("declined"):
                    record.declined[site_label(msg)] = reply_metrics(msg)
        return good

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_site_order(replies)
        record = self.record_for(server_round)
        good = self.screen(server_round, replies, need_arrays=self.sends_arrays())
        record.sites_ok = len(good)
        silent = max(0, record.sites_asked - len(replies))
        if silent:
            reason = f"{silent} site(s) sent no reply before the round timed out"
            log.warning("round %d: %s", server_round, reason)
            record.dropped.append(reason)
        record.sites_failed = len(replies) - len(good) + silent
        for msg in good:
            record.train[site_label(msg)] = reply_metrics(msg)
        # site work: local training plus the optional test of the freshly trained model
        seconds = [m.get("train-seconds", 0.0) + m.get("trained-eval-seconds", 0.0) for m in record.train.values()]
        record.compute_s = float(sum(seconds))
        record.compute_max_s = float(max(seconds, default=0.0))
        if not good:
            log.warning("round %d: no usable replies; the global model stays as it was", server_round)
            result: tuple[ArrayRecord | None, MetricRecord | None] = (None, None)
        else:
            result = self.aggregate_good(server_round, good)
        record.wall_s = time.perf_counter() - self._round_started
        return result

    def sends_arrays(self) -> bool:
        return True

    def average(self, server_round: int, good: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The Flower strategy's weighted average of ``good``, with unanimous arrays exact."""
        arrays, metrics = super().aggregate_train(server_round, good)  # type: ignore[misc]
        return (keep_unanimous(arrays, good) if arrays is not None else None), metrics

    def aggregate_good(self, server_round: int, good: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not self.group_heads:
            return self.average(server_round, good)
        heads = average_group_heads(good, self.weighted_by_key)  # type: ignore[attr-defined]
        for msg in good:  # the strategy averages the rest, which every site sends
            name, arrays = next(iter(msg.content.array_records.items()))
            msg.content[name] = ArrayRecord(OrderedDict((k, v) for k, v in arrays.items() if not is_group_key(k)))
        arrays, metrics = self.average(server_round, good)
        if arrays is None:
            return arrays, metrics
        kept = {k: v for k, v in (self._expected or ArrayRecord()).items() if is_group_key(k) and k not in heads}
        merged = {**kept, **heads}  # a group none of whose sites trained this round keeps its head
        alone = {tag for tag, n in self.group_sizes().items() if n == 1}  # its head stays on its site
        merged = {k: v for k, v in merged.items() if group_of(k) not in alone}
        return ArrayRecord(OrderedDict([*arrays.items(), *sorted(merged.items())])), metrics

    def learn_group(self, msg: Message) -> None:
        """Under ``group-heads``: note the label group a reply's site record names."""
        if not self.group_heads:
            return
        site = msg.content.config_records.get("site")
        if site is not None and SITE_KEY in site:
            tag = str(site[SITE_KEY])
            self._node_groups[msg.metadata.src_node_id] = tag
            self._site_groups[site_label(msg)] = tag

    def ask_groups(self, grid, config: ConfigRecord, timeout: float) -> int:
        """Under ``group-heads``, before round 1: ask every connected site for its label
        group (a query message carrying ``config``), so that round 1 already tells each
        site its number of peers. Returns how many sites answered; one that does not is
        handled as before its first reply."""
        if not self.group_heads:
            return 0
        messages = [Message(content=RecordDict({self.configrecord_key: ConfigRecord(dict(config))}),  # type: ignore[attr-defined]
                            message_type=MessageType.QUERY, dst_node_id=node) for node in grid.get_node_ids()]
        answered = 0
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                log.warning("site %s did not name its label group: %s", site_label(reply), reply.error.reason)
                continue
            self.learn_group(reply)
            answered += 1
        log.info("label groups: %d of %d sites named theirs before round 1", answered, len(messages))
        return answered

    def group_sizes(self) -> dict[str, int]:
        """How many of the sites heard from belong to each label group."""
        sizes: dict[str, int] = {}
        for tag in self._site_groups.values():
            sizes[tag] = sizes.get(tag, 0) + 1
        return sizes

    def own_group_heads_only(self, messages: list[Message]) -> list[Message]:
        """``messages``, each to a site whose label group the server knows carrying that
        group's head only and, in its config, how many peers the site has in the group (a
        site without peers then keeps its head at home). So no site receives another
        group's head. A site not heard from yet (one that did not answer
        :meth:`ask_groups`: it connected later, or restarted under a new node id) gets no
        group head and is told it has no peers, so it keeps its own head at home until its
        reply has named its group."""
        if not self.group_heads:
            return messages
        out = []
        key, config_key = self.arrayrecord_key, self.configrecord_key  # type: ignore[attr-defined]
        sizes = self.group_sizes()
        for msg in messages:
            node = msg.metadata.dst_node_id
            arrays = msg.content.array_records.get(key)
            if arrays is not None:
                tag = self._node_groups.get(node)  # None: not heard from, so no group's head and no peers
                content = RecordDict(dict(msg.content.items()))
                content[key] = ArrayRecord(OrderedDict(for_group(arrays, tag)))
                if config_key in msg.content.config_records:
                    content[config_key] = ConfigRecord({**dict(msg.content.config_records[config_key].items()),
                                                        PEERS_KEY: sizes.get(tag, 1) - 1})
                msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
            out.append(msg)
        return out

    # -- evaluation ----------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        if server_round % self.eval_every and server_round != self.num_rounds:
            return []
        for key, value in self.client_config.items():
            config[key] = value
        return self.own_group_heads_only(list(super().configure_evaluate(server_round, arrays, config, grid)))  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        good = self.screen(server_round, in_site_order(replies), need_arrays=False)
        record = self.record_for(server_round)
        for msg in good:
            record.evaluate[site_label(msg)] = reply_metrics(msg)
        if not good:
            return None
        return super().aggregate_evaluate(server_round, good)  # type: ignore[misc]
