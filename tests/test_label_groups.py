"""``group-heads``: sites whose label lists are identical average their classifier heads,
under policies that otherwise keep every head on its site (models.label_groups)."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

import client.trainer as trainer
from client.app import train
from models.label_groups import (PEERS_KEY, SITE_KEY, for_group, group_key, group_of, is_group_key, label_group,
                                 own_group, tagged_heads)
from models.roles import parameter_kind
from server.federation import check_group_heads
from server.settings import RunSettings
from strategies.registry import StrategyOptions, build_strategy
from strategies.screening import reply_problem
from test_fsar_rounds import _state, recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)

GROUPS = Path(__file__).parent / "scenarios" / "label-groups.toml"
A, B = label_group(["wave", "kick", "sit"]), label_group(["kick", "wave", "sit"])


def test_a_group_is_the_ordered_label_list():
    assert A == label_group(["wave", "kick", "sit"]) and A != B  # the same names in another order are not one head
    personal = {"head.weight": 1, "head.bias": 2, "blocks.0.gcn.topology.unique": 3}
    tagged = tagged_heads(personal, A)
    assert set(tagged) == {group_key(A, "head.weight"), group_key(A, "head.bias")}
    assert all(is_group_key(k) for k in tagged)
    assert own_group({**tagged, **tagged_heads(personal, B), "w": 0}, A) == {"head.weight": 1, "head.bias": 2}
    assert {group_of(k) for k in tagged} == {A}
    assert for_group({**tagged, **tagged_heads(personal, B), "w": 0}, B) == {**tagged_heads(personal, B), "w": 0}


def reply(node: int, n: float, arrays: dict[str, torch.Tensor], group: str | None = None) -> Message:
    site = {"site-name": f"site-{node}", **({SITE_KEY: group} if group else {})}
    content = RecordDict({"arrays": ArrayRecord(OrderedDict(arrays)),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5, "train-seconds": 1.0}),
                          "site": ConfigRecord(site)})
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=content, metadata=meta)


def test_the_server_averages_each_group_over_its_own_sites_and_keeps_absent_groups():
    strategy = build_strategy("fedavg", StrategyOptions(), eval_every=1, num_rounds=1, num_sites=3)
    strategy.group_heads = True
    absent = label_group(["only", "elsewhere"])
    strategy._expected = ArrayRecord(OrderedDict(w=torch.zeros(2), **{group_key(absent, "head.bias"): torch.full((2,), 7.0)}))
    strategy._round_started = time.perf_counter()
    strategy.record_for(1).sites_asked = 3
    a, b = group_key(A, "head.bias"), group_key(B, "head.bias")
    replies = [
        reply(1, 10, {"w": torch.ones(2), a: torch.ones(3)}),
        reply(2, 30, {"w": 3 * torch.ones(2), a: 5 * torch.ones(3)}),
        reply(3, 20, {"w": 2 * torch.ones(2), b: -torch.ones(3)}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.record_for(1).sites_ok == 3
    np.testing.assert_allclose(arrays["w"].numpy(), (10 * 1 + 30 * 3 + 20 * 2) / 60)  # every site
    np.testing.assert_allclose(arrays[a].numpy(), (10 * 1 + 30 * 5) / 40)  # group A's two sites only
    np.testing.assert_allclose(arrays[b].numpy(), -1.0)
    np.testing.assert_allclose(arrays[group_key(absent, "head.bias")].numpy(), 7.0)  # no site of it this round


def test_group_keys_pass_screening_only_when_the_run_groups_heads():
    expected = ArrayRecord(OrderedDict(w=torch.zeros(2), **{group_key(A, "head.bias"): torch.zeros(3)}))
    other_group = reply(1, 10, {"w": torch.ones(2), group_key(B, "head.bias"): torch.ones(4)})
    assert reply_problem(other_group, expected, True, group_heads=True) is None
    assert "keys differ" in reply_problem(other_group, expected, True, group_heads=False)
    wrong_shape = reply(1, 10, {"w": torch.ones(2), group_key(A, "head.bias"): torch.ones(4)})
    assert "head.bias" in reply_problem(wrong_shape, expected, True, group_heads=True)
    assert "keys differ" in reply_problem(reply(1, 10, {group_key(A, "head.bias"): torch.ones(3)}), expected, True,
                                          group_heads=True)  # a group head does not stand in for a shared key


def test_options_that_need_every_key_from_every_site_are_refused():
    assert check_group_heads(RunSettings(group_heads=False, server_momentum=0.9), {}) is False
    with pytest.raises(ValueError, match="server-momentum = 0.9"):
        check_group_heads(RunSettings(group_heads=True, server_momentum=0.9), {})
    with pytest.raises(ValueError, match="secure aggregation"):
        check_group_heads(RunSettings(group_heads=True), {"secure_aggregation": {"rounds": 2}})
    with pytest.raises(ValueError, match="'local' shares nothing"):
        check_group_heads(RunSettings(group_heads=True, strategy="local"), {})


def _heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if parameter_kind(k) == "head"}


def test_sites_of_one_label_set_start_round_two_from_their_averaged_head():
    calls, results = recorded_fsar_rounds(GROUPS, **{"group-heads": True, "mkd": False})
    assert results["model"]["policy"] == "fsar"
    (front1, side1, small1), (front2, side2, small2) = calls[:3], calls[3:]
    assert [c["num_classes"] for c in calls[:3]] == [4, 4, 3]
    n_front, n_side = 48, 36  # 4 classes x 4 subjects x 4 or 3 samples, three quarters for training
    for key, value in _heads(front2["start"]).items():
        average = (n_front * front1["end"][key] + n_side * side1["end"][key]) / (n_front + n_side)
        torch.testing.assert_close(value, average, rtol=1e-5, atol=1e-6)
        assert torch.equal(side2["start"][key], value), key
    for key, value in _heads(small2["start"]).items():  # alone in its group: it keeps its own head
        torch.testing.assert_close(value, small1["end"][key], rtol=1e-6, atol=1e-7)
    assert not any(is_group_key(k) for k in front2["global"])  # the shared part a site loads holds no group keys


def test_a_site_gets_only_its_own_groups_head_and_a_site_alone_keeps_its_own_at_home():
    grids: list = []
    calls, _ = recorded_fsar_rounds(GROUPS, grids=grids, **{"group-heads": True, "mkd": False})
    grid = grids[0]

    def tags(m: Message) -> set[str]:
        arrays = next(iter(m.content.array_records.values()), {})
        return {group_of(k) for k in arrays.keys() if is_group_key(k)}

    kinds = [m.metadata.message_type for m in grid.downlink]
    assert kinds == ["query"] * 3 + ["train"] * 3 + ["evaluate"] * 3 + ["train"] * 3 + ["evaluate"] * 3
    assert all(not m.content.array_records for m in grid.downlink[:3])  # the query carries no parameters
    later = grid.downlink[3:]
    assert {(m.metadata.dst_node_id, m.content["config"][PEERS_KEY]) for m in later} == {(1, 1), (2, 1), (3, 0)}
    pair = tags(later[3])  # round 1's evaluation: the pair's averaged head
    assert len(pair) == 1 and all(tags(m) == pair for m in later[3:] if m.metadata.dst_node_id in (1, 2))
    assert all(not tags(m) for m in later if m.metadata.dst_node_id == 3)  # "small" has a label list of its own
    train = [i for i, r in enumerate(grid.uplink) if r.metadata.message_type == "train"]
    assert [grid.uplink[i].metadata.src_node_id for i in train] == [1, 2, 3, 1, 2, 3]
    sent_tags = [{group_of(k) for k in grid.uplink_keys[i] if is_group_key(k)} for i in train]
    assert sent_tags[0] == sent_tags[1] == sent_tags[3] == sent_tags[4] == pair
    assert not sent_tags[2] and not sent_tags[5]  # told before round 1 that it is alone, "small" never sends its head
    for key, value in _heads(calls[5]["start"]).items():  # and starts round 2 from its own head
        torch.testing.assert_close(value, calls[2]["end"][key], rtol=1e-6, atol=1e-7)


def test_the_server_keeps_no_head_of_a_group_of_one():
    strategy = build_strategy("fedavg", StrategyOptions(), eval_every=1, num_rounds=1, num_sites=3)
    strategy.group_heads = True
    strategy._expected = ArrayRecord(OrderedDict(w=torch.zeros(2)))
    strategy._round_started = time.perf_counter()
    strategy.record_for(1).sites_asked = 3
    a, b = group_key(A, "head.bias"), group_key(B, "head.bias")
    replies = [reply(1, 10, {"w": torch.ones(2), a: torch.ones(3)}, A), reply(2, 30, {"w": torch.ones(2), a: torch.ones(3)}, A),
               reply(3, 20, {"w": torch.ones(2), b: torch.ones(3)}, B)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert a in arrays and b not in arrays
    assert strategy.group_sizes() == {A: 2, B: 1}
    restarted = reply(7, 20, {"w": torch.ones(2)}, B)  # site 3 again, under a new node id
    restarted.content["site"]["site-name"] = "site-3"
    strategy.learn_group(restarted)
    assert strategy.group_sizes() == {A: 2, B: 1}  # still a group of one: sites count by name


def test_a_site_not_heard_from_gets_no_group_head_and_is_told_to_keep_its_own():
    """A site that connected after the label-group query (or restarted under a new node
    id): no group's head goes to it, and with no peers it sends none of its own, until
    its reply has named its group."""
    strategy = build_strategy("fedavg", StrategyOptions(), eval_every=1, num_rounds=2, num_sites=3)
    strategy.group_heads = True
    strategy.learn_group(reply(1, 10, {}, A))
    strategy.learn_group(reply(2, 10, {}, A))
    record = {"w": torch.zeros(2), group_key(A, "head.bias"): torch.ones(3), group_key(B, "head.bias"): torch.ones(3)}

    def train_message(node: int) -> Message:
        content = RecordDict({"arrays": ArrayRecord(OrderedDict(record)), "config": ConfigRecord({"server-round": 2})})
        return Message(content=content, message_type="train", dst_node_id=node)

    known, late = strategy.own_group_heads_only([train_message(1), train_message(9)])
    assert set(known.content["arrays"].keys()) == {"w", group_key(A, "head.bias")}
    assert known.content["config"][PEERS_KEY] == 1
    assert set(late.content["arrays"].keys()) == {"w"}
    assert late.content["config"][PEERS_KEY] == 0
    strategy.learn_group(reply(9, 10, {}, B))  # its first reply names its group: from now on as any site
    (late,) = strategy.own_group_heads_only([train_message(9)])
    assert set(late.content["arrays"].keys()) == {"w", group_key(B, "head.bias")}
    assert late.content["config"][PEERS_KEY] == 0  # site-9 is alone in group B


def test_a_site_that_first_trains_after_its_group_goes_on_from_the_groups_head(monkeypatch):
    """A site that trains for the first time in round 2 (it connected late, or was not
    sampled in round 1) receives the head its label group trained: it goes on from that
    head instead of replacing it with a start from its own class means."""
    grids: list = []
    recorded_fsar_rounds(GROUPS, grids=grids, **{
        "group-heads": True, "mkd": False, "model-overrides": '{"statistics": true}', "head-start": "class-means"})
    grid = grids[0]
    tag = next(r.content["site"][SITE_KEY] for r in grid.uplink if r.content["site"]["site-name"] == "front")
    round2 = [m for m in grid.downlink if m.metadata.message_type == "train"][3]
    assert round2.metadata.dst_node_id == 1 and round2.content["config"]["server-round"] == 2
    group_head = {k: torch.from_numpy(v.numpy()) for k, v in own_group(round2.content["arrays"], tag).items()}
    assert group_head["head.bias"].abs().sum() > 0, "a trained head (a class-mean start has zero bias)"
    starts: list[dict] = []
    real_train = trainer.train

    def recording_train(model, data, config, **kwargs):
        starts.append(_state(model))
        return real_train(model, data, config, **kwargs)

    late = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    monkeypatch.setattr(trainer, "train", recording_train)
    reply = train(round2, late)
    assert not reply.has_error()
    for key, value in group_head.items():
        torch.testing.assert_close(starts[0][key], value)
    assert starts[0]["statistics.scale_fitted"].item() == 1.0  # its own scale, fitted now
