"""Central (user-level) DP: Flower's fixed-clipping wrappers, equal weights, the accountant."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from opacus.accountants import RDPAccountant

from inprocess_grid import InProcessGrid, coordinator_identity

from privacy.central import (
    CentralDPSettings,
    central_epsilon,
    clipping_when_requested,
    epsilon_of_history,
    wrap_central_dp,
)
from privacy.coordinator import coordinator_privacy
from strategies.registry import StrategyOptions, build_strategy

SIZE = 30000  # parameters: enough to measure the noise's standard deviation


@pytest.fixture(autouse=True)
def server_identity():
    with coordinator_identity():
        yield


def arrays(values: np.ndarray) -> ArrayRecord:
    return ArrayRecord(OrderedDict(w=Array(values.astype(np.float32))))


def reply(node: int, values: np.ndarray, n: int, declined: bool = False) -> Message:
    site = {"site-name": f"site-{node}"}
    if declined:
        site["declined"] = "privacy budget spent"
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    content = RecordDict({"arrays": arrays(values), "metrics": MetricRecord({"num-examples": n, "train-loss": 0.1}),
                          "site": ConfigRecord(site)})
    return Message(content=content, metadata=meta)


def wrapped(noise=2.0, clip=1.0, clipping="server", sites=3, record_path=None, resume=False):
    inner = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=3, num_sites=sites)
    settings = CentralDPSettings(noise, clip, clipping)
    return inner, wrap_central_dp(inner, settings, sites, record_path=record_path, resume=resume)


def test_central_epsilon_is_the_rdp_accountant():
    reference = RDPAccountant()
    reference.history = [(1.1, 1.0, 20)]
    assert central_epsilon(1.1, 20, delta=1e-5) == pytest.approx(reference.get_epsilon(delta=1e-5))
    assert central_epsilon(1.1, 20, sample_rate=0.1) < central_epsilon(1.1, 20)
    assert central_epsilon(1.1, 40) > central_epsilon(1.1, 20)


def test_server_side_clipping_equal_weights_and_noise_scale():
    rng = np.random.default_rng(0)
    inner, strategy = wrapped(noise=2.0, clip=1.0)
    start = np.zeros(SIZE, np.float32)
    messages = list(strategy.configure_train(1, arrays(start), ConfigRecord({}), InProcessGrid.listing(3)))
    assert len(messages) == 3
    updates = [rng.normal(size=SIZE) * s for s in (0.1, 0.5, 2.0)]  # norms ~17, ~87, ~346: all clipped
    counts = (10, 100, 1000)  # FedAvg would weigh by these; central DP must not
    result, _ = strategy.aggregate_train(1, [reply(i + 1, u, n) for i, (u, n) in enumerate(zip(updates, counts))])
    clipped = [u / max(1.0, np.linalg.norm(u) / 1.0) for u in updates]
    assert all(np.linalg.norm(c) <= 1.0 + 1e-5 for c in clipped)
    noise = result["w"].numpy() - np.mean(clipped, axis=0)
    assert noise.std() == pytest.approx(2.0 * 1.0 / 3, rel=0.03)
    assert abs(noise.mean()) < 5 * noise.std() / np.sqrt(SIZE)
    weighted = np.average(clipped, axis=0, weights=counts)
    assert np.linalg.norm(result["w"].numpy() - weighted) > np.linalg.norm(noise) * 1.01 or not np.allclose(
        np.mean(clipped, axis=0), weighted)
    assert inner.weighted_by_key == "num-examples", "the inner strategy's weighting is restored"
    assert strategy.releases[-1]["noise_multiplier"] == 2.0
    assert strategy.epsilon == pytest.approx(central_epsilon(2.0, 1))


def test_a_missing_site_is_accounted_with_the_effective_noise(tmp_path):
    path = tmp_path / "central-dp.json"
    _, strategy = wrapped(noise=1.5, clip=1.0, record_path=path)
    zeros = np.zeros(100, np.float32)
    for rnd in (1, 2):
        list(strategy.configure_train(rnd, arrays(zeros), ConfigRecord({}), InProcessGrid.listing(3)))
        replies = [reply(1, zeros + 0.01, 10), reply(2, zeros - 0.01, 10)]
        replies.append(reply(3, zeros, 0, declined=True) if rnd == 2 else reply(3, zeros, 10))
        strategy.aggregate_train(rnd, replies)
    assert [r["contributors"] for r in strategy.releases] == [3, 2]
    assert strategy.releases[1]["noise_multiplier"] == pytest.approx(1.0)
    assert strategy.epsilon == pytest.approx(epsilon_of_history([(1.5, 1.0, 1), (1.0, 1.0, 1)], 1e-5))
    # the coordinator restarts: the releases already made still count
    _, again = wrapped(noise=1.5, clip=1.0, record_path=path, resume=True)
    assert again.epsilon == pytest.approx(strategy.epsilon)


def test_client_side_clipping_mod_clips_the_site_update():
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    start = np.zeros(50, np.float32)
    big = np.full(50, 3.0, np.float32)

    def app(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({"arrays": arrays(big), "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    config = ConfigRecord({"clipping_norm": 0.5})
    out = clipping_when_requested(Message(content=RecordDict({"arrays": arrays(start), "config": config}), metadata=meta),
                                  context, app)
    assert np.linalg.norm(out.content["arrays"]["w"].numpy() - start) == pytest.approx(0.5, rel=1e-5)
    plain = clipping_when_requested(
        Message(content=RecordDict({"arrays": arrays(start), "config": ConfigRecord({})}), metadata=meta), context, app)
    np.testing.assert_array_equal(plain.content["arrays"]["w"].numpy(), big)

    def declines(msg: Message, ctx: Context) -> Message:  # sends the global model back unchanged
        return Message(RecordDict({"arrays": arrays(start), "metrics": MetricRecord({"num-examples": 0})}), reply_to=msg)

    same = clipping_when_requested(Message(content=RecordDict({"arrays": arrays(start), "config": config}), metadata=meta),
                                   context, declines)
    assert not same.has_error() and same.content["metrics"]["num-examples"] == 0


def test_client_side_wrapper_sends_the_clipping_norm():
    _, strategy = wrapped(clipping="client")
    messages = list(strategy.configure_train(1, arrays(np.zeros(4)), ConfigRecord({}), InProcessGrid.listing(3)))
    assert all(m.content["config"]["clipping_norm"] == 1.0 for m in messages)


def test_run_config_and_coordinator_checks():
    assert CentralDPSettings.from_run_config({}) is None
    s = CentralDPSettings.from_run_config({"central-dp-noise": "1.2", "central-dp-clip": "0.5"})
    assert (s.noise_multiplier, s.clipping_norm, s.clipping) == (1.2, 0.5, "server")
    with pytest.raises(ValueError, match="central-dp-clipping"):
        CentralDPSettings.from_run_config({"central-dp-noise": 1, "central-dp-clipping": "middle"})
    inner = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=3, num_sites=3)
    with pytest.raises(ValueError, match="central-dp-clipping = 'client'"):
        coordinator_privacy(inner, InProcessGrid.listing(3), {"secagg": "true", "central-dp-noise": 1.0}, num_rounds=3, num_sites=3)
    local = build_strategy("local", StrategyOptions(), eval_every=1, num_rounds=3, num_sites=3)
    with pytest.raises(ValueError, match="not 'local'"):
        coordinator_privacy(local, InProcessGrid.listing(3), {"central-dp-noise": 1.0}, num_rounds=3, num_sites=3)
    plain = coordinator_privacy(inner, InProcessGrid.listing(3), {"dp-epsilon": 8}, num_rounds=3, num_sites=3)
    assert plain.strategy is inner and plain.train_keys == {"dp-epsilon": 8, "num-server-rounds": 3}


def test_a_resumed_run_goes_on_from_the_release_record_and_a_new_run_starts_its_own(tmp_path):
    import json

    record = {"releases": [{"round": 1, "noise_multiplier": 1.0, "contributors": 3, "epsilon": 4.2}]}
    (tmp_path / "central-dp.json").write_text(json.dumps(record))

    def wrapped_run(resume: bool):
        inner = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=3, num_sites=3)
        return coordinator_privacy(inner, InProcessGrid.listing(3), {"central-dp-noise": 1.0}, num_rounds=3,
                                   num_sites=3, out_dir=tmp_path, resume=resume).central

    resumed = wrapped_run(resume=True)
    assert len(resumed.releases) == 1 and resumed.epsilon == pytest.approx(central_epsilon(1.0, 1))
    fresh = wrapped_run(resume=False)  # e.g. fedsar-sim run again into the same --out
    assert fresh.releases == [] and fresh.epsilon == 0.0
    zeros = np.zeros(100, np.float32)
    list(fresh.configure_train(1, arrays(zeros), ConfigRecord({}), InProcessGrid.listing(3)))
    fresh.aggregate_train(1, [reply(n, zeros + 0.01, 10) for n in (1, 2, 3)])
    kept = json.loads((tmp_path / "central-dp.json").read_text())["releases"]
    assert len(kept) == 1 and kept[0]["epsilon"] == pytest.approx(central_epsilon(1.0, 1))  # its own release only
