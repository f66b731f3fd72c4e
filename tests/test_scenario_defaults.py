"""A scenario's ``[defaults]`` train the same run wherever it starts: ``fedsar-sim``,
``fedsar-server`` (``federation.toml`` ``[run]``) and ``flwr run .`` (``pyproject.toml``)."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pytest

from server.federation_config import FederationConfigError, load_federation_config
from server.settings import RunSettings, with_scenario_defaults
from simulations.run import add_arguments, settings_from_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "deploy" / "examples"
TINY = ROOT / "tests" / "scenarios" / "tiny.toml"


def test_the_run_keys_win_over_the_scenario_defaults() -> None:
    config = with_scenario_defaults({"scenario": str(TINY), "learning-rate": 0.05})
    assert config["learning-rate"] == 0.05  # the run's own
    assert config["optimizer"] == "adamw" and config["num-server-rounds"] == 3  # tiny.toml's [defaults]
    synthetic = RunSettings.from_run_config(with_scenario_defaults({}))  # no scenario: the synthetic one
    assert (synthetic.optimizer, synthetic.num_server_rounds, synthetic.learning_rate) == ("adamw", 12, 0.002)


def test_a_mistyped_default_is_named_with_its_file(tmp_path: Path) -> None:
    scenario = tmp_path / "typo.toml"
    scenario.write_text(TINY.read_text().replace("optimizer = ", "optimiser = "))
    with pytest.raises(ValueError, match=r"typo.toml: \[defaults\]: run config 'optimiser' .*'optimizer'"):
        with_scenario_defaults({"scenario": str(scenario)})


def test_flwr_run_trains_the_default_job_of_fedsar_sim(tmp_path: Path) -> None:
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    under_flwr = RunSettings.from_run_config(with_scenario_defaults(app_config)).to_run_config()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    under_sim = settings_from_args(parser.parse_args([]), "fsar", tmp_path).to_run_config()
    differing = {k: (under_flwr.get(k), v) for k, v in under_sim.items() if under_flwr.get(k) != v}
    assert set(differing) <= {"out-dir"}, differing  # the simulator's output folder only


def test_a_coordinator_run_takes_the_scenario_defaults_it_does_not_set(tmp_path: Path) -> None:
    from server.daemon import write_app

    (tmp_path / "tiny-scenario.toml").write_text((EXAMPLES / "tiny-scenario.toml").read_text())
    text = (EXAMPLES / "federation.toml").read_text()
    assert "num-server-rounds = 3\n" in text and "learning-rate = 0.05" in text
    text = text.replace("num-server-rounds = 3\n", "").replace("learning-rate = 0.05", "learning-rate = 0.02")
    (tmp_path / "federation.toml").write_text(text)
    config = load_federation_config(tmp_path / "federation.toml")
    assert config.run["num-server-rounds"] == 2  # tiny-scenario.toml's [defaults]
    assert config.run["learning-rate"] == 0.02  # [run]'s own
    config.state_dir = tmp_path / "state"
    written = tomllib.loads((write_app(config, resume=False) / "pyproject.toml").read_text())
    assert written["tool"]["flwr"]["app"]["config"]["num-server-rounds"] == 2


def test_a_table_in_the_defaults_reaches_a_coordinator_as_the_json_text_a_run_config_holds(tmp_path: Path) -> None:
    scenario = (EXAMPLES / "tiny-scenario.toml").read_text().replace(
        "[defaults]\n", '[defaults]\nmodel-overrides = { statistics = true }\n')
    (tmp_path / "tiny-scenario.toml").write_text(scenario)
    (tmp_path / "federation.toml").write_text((EXAMPLES / "federation.toml").read_text())
    config = load_federation_config(tmp_path / "federation.toml")
    assert json.loads(config.run["model-overrides"]) == {"statistics": True}
    assert config.settings().extra["model-overrides"] == config.run["model-overrides"]
    (tmp_path / "tiny-scenario.toml").write_text(
        scenario.replace("model-overrides = { statistics = true }", 'anonymize = { method = "bones" }'))
    with pytest.raises(FederationConfigError, match=r"\[run\] anonymize = .* from the scenario's \[defaults\] must be"):
        load_federation_config(tmp_path / "federation.toml")
