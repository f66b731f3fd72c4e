"""SecAgg+ for Message-API strategies: the coordinator gets only the (weighted) average.

The sites run Flower's own ``secaggplus_mod`` behind fedsar's adapter; the server side
is :class:`privacy.secagg.SecAggPlusGrid`. A loopback grid delivers every message to
in-process sites with their own ``Context``, so the full four-stage protocol runs.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from inprocess_grid import InProcessGrid, coordinator_identity
from privacy.secagg import SecAggPlusGrid, SecAggSettings, secaggplus_when_requested

SHAPES = {"w": (3, 4), "b": (5,)}


@pytest.fixture(autouse=True)
def server_identity():
    with coordinator_identity():
        yield


def loopback(apps) -> InProcessGrid:
    """In-process sites, each behind the SecAgg+ mod."""
    return InProcessGrid({nid: functools.partial(through_mod, app=app) for nid, app in apps.items()})


def through_mod(msg: Message, context: Context, app) -> Message:
    return secaggplus_when_requested(msg, context, app)


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.asarray(v, np.float32))) for k, v in arrays.items()))


def site_app(params: dict[str, np.ndarray], n: int, name: str):
    def app(msg: Message, context: Context) -> Message:
        assert "secaggplus_configs" not in msg.content.config_records, "the app must see a plain train message"
        return Message(RecordDict({
            "arrays": record(params), "metrics": MetricRecord({"num-examples": n, "train-loss": 0.25}),
            "site": ConfigRecord({"site-name": name}),
        }), reply_to=msg)
    return app


def failing_app(msg: Message, context: Context) -> Message:
    raise RuntimeError("the site's disk failed")


def train_messages(nodes, uniform=False):
    zeros = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    config = {"server-round": 3}
    if uniform:
        config["secagg-uniform-weights"] = True
    return [Message(content=RecordDict({"arrays": record(zeros), "config": ConfigRecord(config)}),
                    dst_node_id=nid, message_type="train") for nid in nodes]


def make_sites(counts, seed=0):
    rng = np.random.default_rng(seed)
    params = {nid: {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for nid in counts}
    return params, {nid: site_app(params[nid], n, f"site-{nid}") for nid, n in counts.items()}


def weighted_mean(params, weights):
    total = sum(weights.values())
    return {k: sum(weights[i] * params[i][k] for i in weights) / total for k in SHAPES}


def test_secure_average_equals_weighted_mean_and_nothing_plain_goes_up():
    counts = {11: 10, 12: 30, 13: 20, 14: 40}
    params, apps = make_sites(counts)
    loop = loopback(apps)
    grid = SecAggPlusGrid(loop, SecAggSettings(max_weight=100.0))
    replies = list(grid.send_and_receive(train_messages(counts)))
    expected = weighted_mean(params, counts)
    assert len(replies) == 4
    for reply in replies:
        assert not reply.has_error()
        for key, value in reply.content["arrays"].items():
            np.testing.assert_allclose(value.numpy(), expected[key], atol=1e-4)
        name = reply.content["site"]["site-name"]
        assert reply.content["metrics"]["num-examples"] == counts[int(name.split("-")[1])]
    # what actually left the sites: masked integer vectors, never the parameters
    uploaded = [a for r in loop.uplink for rec in r.content.array_records.values() for a in rec.values()]
    assert uploaded == []
    masked = [r for r in loop.uplink if "masked_params" in r.content.config_records["secaggplus_configs"]]
    assert len(masked) == 4
    assert grid.rounds[-1] == {"round": 3, "sampled": 4, "shares": 4, "threshold": 3, "max_weight": 100.0,
                               "contributors": 4, "dropped": 0}


def test_a_site_dropping_out_and_a_declining_site():
    counts = {21: 10, 22: 30, 23: 20, 24: 0}  # 24 declines: weight 0
    params, apps = make_sites(counts, seed=1)
    apps[23] = failing_app  # fails while training (stage 2): its pairwise masks are removed
    grid = SecAggPlusGrid(loopback(apps), SecAggSettings(max_weight=100.0, threshold=0.5))
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(train_messages(counts))}
    assert replies[23].has_error() and "disk failed" in replies[23].error.reason
    expected = weighted_mean(params, {21: 10, 22: 30})
    for nid in (21, 22, 24):
        for key, value in replies[nid].content["arrays"].items():
            np.testing.assert_allclose(value.numpy(), expected[key], atol=1e-4)
    assert replies[24].content["metrics"]["num-examples"] == 0
    assert grid.rounds[-1]["contributors"] == 3 and grid.rounds[-1]["dropped"] == 1


def test_uniform_weights_for_central_dp():
    counts = {31: 5, 32: 50, 33: 500}
    params, apps = make_sites(counts, seed=2)
    grid = SecAggPlusGrid(loopback(apps), SecAggSettings(), uniform=True)
    reply = next(iter(grid.send_and_receive(train_messages(counts, uniform=True))))
    expected = weighted_mean(params, {31: 1, 32: 1, 33: 1})
    for key, value in reply.content["arrays"].items():
        np.testing.assert_allclose(value.numpy(), expected[key], atol=1e-4)


def test_a_site_outside_the_clipping_range_drops_out_instead_of_corrupting_the_sum():
    counts = {41: 10, 42: 10, 43: 10}
    params, apps = make_sites(counts, seed=3)
    params[43]["w"][0, 0] = 500.0
    grid = SecAggPlusGrid(loopback(apps), SecAggSettings(max_weight=10.0, threshold=0.5))
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(train_messages(counts))}
    assert replies[43].has_error() and "clipping range" in replies[43].error.reason
    expected = weighted_mean(params, {41: 10, 42: 10})
    np.testing.assert_allclose(replies[41].content["arrays"]["b"].numpy(), expected["b"], atol=1e-4)


def test_strategy_aggregates_the_secure_average():
    from strategies.registry import StrategyOptions, build_strategy

    counts = {51: 10, 52: 30, 53: 20}
    params, apps = make_sites(counts, seed=4)
    strategy = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=1, num_sites=3)
    grid = SecAggPlusGrid(loopback(apps), SecAggSettings(max_weight=100.0))
    zeros = record({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
    messages = strategy.configure_train(1, zeros, ConfigRecord({}), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    expected = weighted_mean(params, counts)
    for key, value in arrays.items():
        np.testing.assert_allclose(value.numpy(), expected[key], atol=1e-4)
    assert strategy.record_for(1).sites_ok == 3


def test_fewer_than_two_sites_halts_with_a_reason():
    params, apps = make_sites({61: 10})
    replies = list(SecAggPlusGrid(loopback(apps), SecAggSettings()).send_and_receive(train_messages([61])))
    assert replies[0].has_error() and "at least 2" in replies[0].error.reason


def test_settings_from_run_config():
    assert SecAggSettings.from_run_config({}) is None
    settings = SecAggSettings.from_run_config({"secagg": "true", "secagg-max-weight": "2000"})
    assert settings.max_weight == 2000.0 and settings.shares_for(4) == (4, 3) and settings.shares_for(7) == (7, 5)
    with pytest.raises(ValueError, match="secagg-max-weight"):
        SecAggSettings.from_run_config({"secagg": True, "secagg-max-weight": "lots"})


@pytest.mark.slow
def test_secagg_dp_sgd_and_central_dp_in_a_simulation(tmp_path):
    """Three sites on Flower's simulation engine: DP-SGD on each, SecAgg+, client-side central DP."""
    from server.settings import RunSettings
    from simulations.engine import simulate
    from skeletons.scenario import load_scenario

    path = Path(__file__).parent / "scenarios" / "privacy-tiny.toml"
    scenario = load_scenario(path)
    config = dict(scenario.defaults)
    config.update({"scenario": str(path), "strategy": "fedavg", "device": "cpu", "out-dir": str(tmp_path),
                   "dp-epsilon": 8.0, "secagg": True, "central-dp-noise": 0.8, "central-dp-clip": 5.0,
                   "central-dp-clipping": "client"})
    results = simulate(scenario, RunSettings.from_run_config(config), quiet=True)
    privacy = json.loads((tmp_path / "results.json").read_text())["privacy"]
    assert [r["contributors"] for r in privacy["secure_aggregation"]["rounds"]] == [3, 3]
    assert len(privacy["central_dp"]["releases"]) == 2 and privacy["central_dp"]["epsilon"] > 0
    assert set(privacy["sites"]) == {"a", "b", "c"}
    assert all(0 < s["epsilon"] <= 8.0 and s["dp"] == 1.0 for s in privacy["sites"].values())
    assert all(r["sites_ok"] == 3 for r in results["rounds"])


def test_simulated_sites_keep_flowers_logger_as_quiet_as_the_simulation():
    """fedsar-sim's actors inherit FEDSAR_SIM_FLWR_LOG_LEVEL; the ClientApp module applies
    it, so SecAgg+'s per-stage lines stay out of the console."""
    import os
    import subprocess
    import sys

    code = "import logging, client.app; print(logging.getLogger('flwr').level)"
    env = {**os.environ, "FEDSAR_SIM_FLWR_LOG_LEVEL": "WARNING"}
    root = Path(__file__).resolve().parents[1]
    quiet = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert quiet.stdout.strip() == "30"
    env.pop("FEDSAR_SIM_FLWR_LOG_LEVEL")
    deployed = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert deployed.stdout.strip() != "30"  # a deployed site keeps Flower's own level
