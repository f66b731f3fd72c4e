"""Starting a federation from a saved global model (``--initial-model``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.federation import initial_arrays, model_config_for
from server.settings import RunSettings
from server.warm_start import WarmStartError, warm_start
from skeletons.atomic import read_arrays, write_arrays
from skeletons.scenario import load_scenario
from strategies.registry import client_policy

TINY = Path(__file__).parent / "scenarios" / "tiny.toml"


def _fresh(strategy: str = "fsar", seed: int = 0):
    scenario = load_scenario(TINY)
    config = dict(scenario.defaults)
    config.update({"scenario": str(TINY), "strategy": strategy, "seed": seed, "device": "cpu"})
    settings = RunSettings.from_run_config(config)
    policy = client_policy(strategy, scenario.shared_label_set)
    return initial_arrays(scenario, settings, model_config_for(scenario, settings.model_preset), policy), settings


def test_matching_parameters_are_loaded_and_the_rest_kept_fresh(tmp_path):
    fresh, _ = _fresh()
    keys = list(fresh.keys())
    saved = {k: fresh[k].numpy() + 3.0 for k in keys}
    wrong_shape, missing = keys[0], keys[1]
    saved[wrong_shape] = np.zeros((2, 2), dtype=np.float32)
    del saved[missing]
    saved["not.in.this.model"] = np.ones(4, dtype=np.float32)
    write_arrays(tmp_path / "global.npz", saved)

    started, kept_fresh = warm_start(fresh, tmp_path)  # the run folder, not the file

    assert sorted(kept_fresh) == sorted([wrong_shape, missing])
    assert list(started.keys()) == keys
    for key in keys:
        expected = fresh[key].numpy() if key in kept_fresh else fresh[key].numpy() + 3.0
        np.testing.assert_allclose(started[key].numpy(), expected)
        assert started[key].numpy().dtype == fresh[key].numpy().dtype


def test_a_model_sharing_nothing_is_refused_naming_the_file(tmp_path):
    fresh, _ = _fresh()
    path = tmp_path / "other.npz"
    write_arrays(path, {k: np.zeros(1, dtype=np.float32) for k in fresh.keys()})
    with pytest.raises(WarmStartError, match="other.npz.*none of its"):
        warm_start(fresh, path)


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    fresh, _ = _fresh()
    with pytest.raises(WarmStartError, match="nowhere.npz: no such file"):
        warm_start(fresh, tmp_path / "nowhere.npz")
    bad = tmp_path / "global.npz"
    bad.write_text("not an archive")
    with pytest.raises(WarmStartError, match="cannot read it"):
        warm_start(fresh, bad)


@pytest.mark.slow
def test_a_run_starts_from_the_initial_model(tmp_path):
    """One real round on the simulation engine: the global model it ends with lies next
    to the initial model (every parameter offset by 5), not next to a fresh one."""
    from simulations.engine import simulate

    fresh, _ = _fresh()
    offset = {k: fresh[k].numpy() + 5.0 for k in fresh.keys()}
    write_arrays(tmp_path / "start.npz", offset)
    scenario = load_scenario(TINY)
    config = dict(scenario.defaults)
    config.update({"scenario": str(TINY), "strategy": "fsar", "num-server-rounds": 1, "device": "cpu",
                   "out-dir": str(tmp_path / "run"), "initial-model": str(tmp_path / "start.npz")})
    simulate(scenario, RunSettings.from_run_config(config), quiet=True)

    final = read_arrays(tmp_path / "run" / "global.npz")
    to_start = np.mean([np.abs(final[k] - offset[k]).mean() for k in final])
    to_fresh = np.mean([np.abs(final[k] - fresh[k].numpy()).mean() for k in final])
    assert to_start < 1.0 < to_fresh
