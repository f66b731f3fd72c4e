"""Reply screening: malformed site replies are dropped with a reason, sound ones kept."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from strategies.registry import StrategyOptions, build_strategy, client_policy
from strategies.screening import arrays_nbytes, reply_problem


def reference() -> ArrayRecord:
    return ArrayRecord(OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3)))


def reply(arrays: ArrayRecord | None, n: float = 10, node: int = 7, loss: float = 0.5) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": n, "train-loss": loss, "train-seconds": 1.0}),
                          "site": ConfigRecord({"site-name": f"site-{node}"})})
    if arrays is not None:
        content["arrays"] = arrays
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=content, metadata=meta)


def test_sound_reply_passes():
    assert reply_problem(reply(reference()), reference(), need_arrays=True) is None


@pytest.mark.parametrize(
    "arrays, expected",
    [
        (ArrayRecord(OrderedDict(w=torch.zeros(2, 3))), "keys differ"),
        (ArrayRecord(OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3), extra=torch.zeros(1))), "keys differ"),
        (ArrayRecord(OrderedDict(w=torch.zeros(3, 2), b=torch.zeros(3))), "parameter 'w'"),
        (ArrayRecord(OrderedDict(w=torch.full((2, 3), float("nan")), b=torch.zeros(3))), "NaN or Inf"),
        (ArrayRecord(OrderedDict(w=torch.zeros(2, 3), b=torch.tensor([0.0, float("inf"), 0.0]))), "NaN or Inf"),
    ],
)
def test_malformed_arrays_are_named(arrays, expected):
    problem = reply_problem(reply(arrays), reference(), need_arrays=True)
    assert problem is not None and expected in problem


def test_bad_example_count_and_metrics():
    assert "num-examples" in reply_problem(reply(reference(), n=0), reference(), True)
    assert "not finite" in reply_problem(reply(reference(), loss=float("nan")), reference(), True)


def test_aggregation_drops_bad_reply_and_averages_the_rest():
    strategy = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=1, num_sites=3)
    strategy._expected = reference()
    strategy._round_started = time.perf_counter()
    good_a = ArrayRecord(OrderedDict(w=torch.ones(2, 3), b=torch.ones(3)))
    good_b = ArrayRecord(OrderedDict(w=3 * torch.ones(2, 3), b=3 * torch.ones(3)))
    poisoned = ArrayRecord(OrderedDict(w=torch.full((2, 3), float("nan")), b=torch.zeros(3)))
    arrays, _ = strategy.aggregate_train(1, [reply(good_a, 10, 1), reply(good_b, 30, 2), reply(poisoned, 10, 3)])
    np.testing.assert_allclose(arrays["w"].numpy(), 2.5)  # (1*10 + 3*30) / 40
    record = strategy.history[-1]
    assert record.sites_ok == 2 and record.sites_failed == 1
    assert len(record.dropped) == 1 and "site-3" in record.dropped[0]
    assert record.uplink_bytes >= 3 * (6 + 3) * 4  # every reply counted, serialized size


def test_policies_follow_label_sets():
    assert client_policy("fedavg", shared_label_set=True) == "fedavg"
    assert client_policy("fedavg", shared_label_set=False) == "fedavg-local-heads"
    assert client_policy("fsar", shared_label_set=True) == "fsar"
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("nope", StrategyOptions(), eval_every=1, num_rounds=1, num_sites=2)


def test_error_reply_is_dropped_not_fatal():
    from flwr.app import Error

    meta = Metadata(run_id=1, message_id="e", src_node_id=9, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    failed = Message(error=Error(code=0, reason="Node Unavailable"), metadata=meta)
    strategy = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=1, num_sites=2)
    strategy._expected = reference()
    strategy._round_started = time.perf_counter()
    good = ArrayRecord(OrderedDict(w=torch.ones(2, 3), b=torch.ones(3)))
    arrays, _ = strategy.aggregate_train(1, [reply(good, 10, 1), failed])
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)
    assert strategy.history[-1].sites_failed == 1 and "node-9" in strategy.history[-1].dropped[0]


def test_site_silent_until_the_timeout_counts_as_failed():
    strategy = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=1, num_sites=3)
    strategy._expected = reference()
    strategy._round_started = time.perf_counter()
    strategy.record_for(1).sites_asked = 3  # as configure_train records it
    good = ArrayRecord(OrderedDict(w=torch.ones(2, 3), b=torch.ones(3)))
    strategy.aggregate_train(1, [reply(good, 10, 1), reply(good, 10, 2)])
    record = strategy.history[-1]
    assert record.sites_ok == 2 and record.sites_failed == 1
    assert "no reply" in record.dropped[0]


def test_cosine_schedule_scales_the_sites_learning_rate_per_round():
    from inprocess_grid import InProcessGrid, coordinator_identity
    from strategies.screening import round_lr_factor

    assert round_lr_factor(1, 8, "cosine") == pytest.approx(1.0)
    assert round_lr_factor(5, 8, "cosine") == pytest.approx(0.5)
    assert 0 < round_lr_factor(8, 8, "cosine") < 0.05
    assert round_lr_factor(8, 8, "constant") == 1.0
    with pytest.raises(ValueError, match="lr-schedule"):
        build_strategy("fsar", StrategyOptions(), eval_every=1, num_rounds=8, num_sites=2, lr_schedule="linear")
    strategy = build_strategy("fsar", StrategyOptions(), eval_every=1, num_rounds=8, num_sites=2, lr_schedule="cosine")
    with coordinator_identity():
        sent = {
            rnd: list(strategy.configure_train(rnd, reference(), ConfigRecord({"learning-rate": 0.002}),
                                               InProcessGrid.listing(2)))
            for rnd in (1, 5)
        }
    rates = {rnd: [float(m.content["config"]["learning-rate"]) for m in msgs] for rnd, msgs in sent.items()}
    assert rates[1] == pytest.approx([0.002, 0.002]) and rates[5] == pytest.approx([0.001, 0.001])


def test_local_sends_the_start_model_with_each_sites_first_train_message():
    """Under ``local`` with ``fraction-train`` < 1 a site may first be sampled in a late
    round; it must still start from the warm start's model, and get nothing after it has
    trained. A site whose first reply is unusable has not trained: it gets the model again."""
    import random

    from inprocess_grid import InProcessGrid, coordinator_identity

    strategy = build_strategy("local", StrategyOptions(), eval_every=1, num_rounds=6, num_sites=4,
                              fraction_train=0.25, min_sites=1)
    strategy.start_model = reference()  # as run_federation sets it under a warm start
    grid = InProcessGrid.listing(4)
    random.seed(1)  # Flower samples nodes with ``random``: this seed has a late first site and a retry
    trained_since: dict[int, int] = {}
    failed: set[int] = set()
    retried = False
    with coordinator_identity():
        for rnd in range(1, 7):
            arrays = ArrayRecord()  # the loop's global record under local
            if rnd == 3:  # sites not trained yet are evaluated on the start model
                evaluated = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
                assert {m.metadata.dst_node_id for m in evaluated} == {1, 2, 3, 4}
                for msg in evaluated:
                    assert len(msg.content["arrays"]) == (0 if msg.metadata.dst_node_id in trained_since else 2)
            sent = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
            assert len(sent) == 1
            node = sent[0].metadata.dst_node_id
            first = node not in trained_since
            assert set(sent[0].content["arrays"].keys()) == ({"w", "b"} if first else set())
            assert strategy.history[-1].downlink_bytes == (arrays_nbytes(reference()) if first else 0)
            retried = retried or node in failed
            if rnd == 2 and first:  # an unusable reply (no examples)
                strategy.aggregate_train(rnd, [reply(None, n=0, node=node)])
                failed.add(node)
                continue
            strategy.aggregate_train(rnd, [reply(None, node=node)])
            trained_since.setdefault(node, rnd)
    assert any(rnd > 1 for rnd in trained_since.values()), trained_since  # the cases this test is for
    assert failed and retried


@pytest.mark.parametrize("name", ["fedavg", "fsar"])
def test_the_average_does_not_depend_on_the_order_replies_arrive_in(name):
    """Float sums depend on their order: the strategies add the replies up in site order,
    so the same replies give bit-identical parameters however the engine delivers them."""
    rng = np.random.default_rng(0)
    replies = [(ArrayRecord(OrderedDict(w=torch.from_numpy(rng.normal(size=(2, 3)).astype(np.float32) * 10 ** k),
                                        b=torch.from_numpy(rng.normal(size=3).astype(np.float32)))), 7 + 3 * k, 1 + k)
               for k in range(6)]
    results = []
    for order in (range(6), reversed(range(6)), [3, 0, 5, 1, 4, 2]):
        strategy = build_strategy(name, StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=1, num_sites=6)
        strategy._expected = reference()
        strategy._round_started = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, [reply(*replies[i]) for i in order])
        results.append({k: v.numpy().tobytes() for k, v in arrays.items()})
        assert list(strategy.history[-1].train) == [f"site-{k}" for k in range(1, 7)]
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("name", ["fedavg", "fsar"])
def test_a_parameter_every_site_sent_unchanged_keeps_its_exact_value(name):
    """A weighted average of equal float32 values rounds in the last bits; the parameters
    no site trained (frozen blocks) must come back bit for bit, which the test's values and
    weights are chosen to break under plain averaging."""
    frozen = torch.tensor([0.1, 1 / 3, 2.7182817, -7.3e-5, 123.456, 1e-7], dtype=torch.float32).reshape(2, 3)
    weights = (7, 13, 29)
    replies = [reply(ArrayRecord(OrderedDict(w=frozen.clone(), b=torch.full((3,), float(k)))), n, k + 1)
               for k, n in enumerate(weights)]
    plain = aggregate_arrayrecords([r.content for r in replies], "num-examples")
    assert plain["w"].numpy().tobytes() != frozen.numpy().tobytes()  # Flower's average alone rounds
    strategy = build_strategy(name, StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=1, num_sites=3)
    strategy._expected = reference()
    strategy._round_started = time.perf_counter()
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays["w"].numpy().tobytes() == frozen.numpy().tobytes()
    np.testing.assert_allclose(arrays["b"].numpy(), (0 * 7 + 1 * 13 + 2 * 29) / 49, rtol=1e-6)  # trained: averaged
