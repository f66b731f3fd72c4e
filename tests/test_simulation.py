"""End-to-end federations on Flower's simulation engine (Ray), one per strategy.

Each run is real: a ServerApp and ClientApps exchanging Messages through the simulation
runtime. The checks read what the server actually received and what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.roles import PERSONAL_KINDS, parameter_kind
from server.federation import initial_arrays, model_config_for
from server.settings import RunSettings
from skeletons.atomic import read_arrays
from skeletons.scenario import load_scenario
from strategies.registry import STRATEGY_NAMES, client_policy

TINY = Path(__file__).parent / "scenarios" / "tiny.toml"
ROUNDS = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[RunSettings, dict]]:
    from simulations.engine import simulate

    scenario = load_scenario(TINY)
    out: dict[str, tuple[RunSettings, dict]] = {}
    for strategy in STRATEGY_NAMES:
        config = dict(scenario.defaults)
        config.update({"scenario": str(TINY), "strategy": strategy, "num-server-rounds": ROUNDS, "device": "cpu",
                       "out-dir": str(tmp_path_factory.mktemp(strategy))})
        settings = RunSettings.from_run_config(config)
        out[strategy] = (settings, simulate(scenario, settings, quiet=True))
    return out


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_results_follow_the_contract(runs, strategy):
    settings, results = runs[strategy]
    on_disk = json.loads((Path(settings.out_dir) / "results.json").read_text())
    assert on_disk["strategy"] == strategy and on_disk["scenario"] == "tiny"
    assert set(on_disk["sites"]) == {"front", "side"}
    assert len(on_disk["rounds"]) == ROUNDS
    for r in on_disk["rounds"]:
        assert r["wall_s"] > 0 and r["compute_s"] > 0 and r["sites_ok"] == 2
        assert {"mean_accuracy", "uplink_bytes"} <= set(r)
    assert on_disk["final"]["mean_accuracy"] == pytest.approx(
        np.mean([s["final_accuracy"] for s in on_disk["sites"].values()]))
    assert on_disk["complete"] is True
    assert on_disk["final"]["mean_trained_accuracy"] == pytest.approx(
        np.mean([s["trained_accuracy"] for s in on_disk["sites"].values()]))
    assert all(set(r["site_trained_accuracy"]) == {"front", "side"} for r in on_disk["rounds"])


def test_local_sites_are_evaluated_on_the_model_they_trained(runs):
    """Under ``local`` nothing is averaged, so both evaluations see the same model; a
    mix-up between the trained model and the global one would break the equality."""
    _, results = runs["local"]
    for site in results["sites"].values():
        assert site["trained_accuracy"] == pytest.approx(site["final_accuracy"])


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_personal_parameters_never_leave_the_site(runs, strategy):
    _, results = runs[strategy]
    policy = client_policy(strategy, load_scenario(TINY).shared_label_set)
    personal = PERSONAL_KINDS[policy]
    received = results["uplink_parameters"]
    leaked = [k for k in received if parameter_kind(k) in personal]
    assert not leaked, f"{strategy} sent personal parameters: {leaked[:5]}"
    if strategy == "local":
        assert received == [] and all(r["uplink_bytes"] == 0 for r in results["rounds"])
    else:
        assert received, "nothing shared reached the server"
    if strategy == "fsar":
        kinds = {parameter_kind(k) for k in received}
        assert "influence" in kinds and not kinds & {"unique", "topology_scalar", "head"}


@pytest.mark.parametrize("strategy", [s for s in STRATEGY_NAMES if s != "local"])
def test_shared_parameters_changed(runs, strategy):
    settings, results = runs[strategy]
    scenario = load_scenario(TINY)
    policy = client_policy(strategy, scenario.shared_label_set)
    start = initial_arrays(scenario, settings, model_config_for(scenario, settings.model_preset), policy)
    final = read_arrays(Path(settings.out_dir) / "global.npz")
    assert set(final) == set(start.keys())
    changed = [k for k in final if not np.allclose(final[k], start[k].numpy())]
    assert len(changed) > len(final) // 2


def test_fsar_uplink_is_smaller_than_fedavg(runs):
    assert runs["fsar"][1]["rounds"][0]["uplink_bytes"] < runs["fedavg"][1]["rounds"][0]["uplink_bytes"]


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_accuracy_rises_above_chance(runs, strategy):
    _, results = runs[strategy]
    chance = 1 / 4
    assert results["final"]["mean_accuracy"] > chance + 0.15


def test_only_flowers_run_simulation_notice_is_held_back() -> None:
    """``fedsar-sim`` drives ``run_simulation`` on purpose; other Flower warnings still show."""
    import logging

    from flwr.supercore.logger import warn_deprecated_feature

    from simulations.engine import _WithoutRunSimulationNotice

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    flwr_log = logging.getLogger("flwr")
    handler, notice = Keep(), _WithoutRunSimulationNotice()
    flwr_log.addHandler(handler)
    flwr_log.addFilter(notice)
    try:
        warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed")
        warn_deprecated_feature("Some other feature is deprecated")
        flwr_log.warning("a plain warning")
    finally:
        flwr_log.removeFilter(notice)
        flwr_log.removeHandler(handler)
    assert len(seen) == 2, seen
    assert "Some other feature" in seen[0] and seen[1] == "a plain warning"
