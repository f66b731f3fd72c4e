"""``--private-recipe``: its keys, explicit options over them, and the cached warm start."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from server.federation import initial_arrays, model_config_for
from server.settings import RunSettings
from simulations.private_recipe import one_thread_environment, synthetic_model_tag, synthetic_warm_start
from simulations.run import add_arguments, settings_from_args
from skeletons.atomic import write_arrays
from skeletons.cache import cache_dir
from skeletons.clikit import UserError
from skeletons.scenario import load_scenario
from models.roles import parameter_kind
from strategies.registry import client_policy

TINY = Path(__file__).parent / "scenarios" / "tiny.toml"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--scenario", str(TINY), "--device", "cpu", "--private-recipe", *argv])


def _cached_model(drop: str | None = None) -> Path:
    """A warm start for the tiny scenario's model, placed where the recipe looks for the
    synthetic one (the cache is the test's own folder); ``drop`` leaves that key out."""
    scenario = load_scenario(TINY)
    settings = RunSettings.from_run_config({**scenario.defaults, "scenario": str(TINY)})
    config = model_config_for(scenario, settings.model_preset, {"statistics": True})
    arrays = initial_arrays(scenario, settings, config, client_policy("fsar", scenario.shared_label_set))
    path = cache_dir() / "warm-start" / f"synthetic-{synthetic_model_tag()}" / "global.npz"
    path.parent.mkdir(parents=True)
    write_arrays(path, {k: v.numpy() + 1.0 for k, v in arrays.items() if k != drop})
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDSAR_CACHE", raising=False)
    monkeypatch.setenv("FEDSAR_CACHE_DIR", str(tmp_path / "cache"))


def test_one_cache_folder_for_data_and_warm_start_with_the_older_name_still_read(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"  # the fixture's FEDSAR_CACHE_DIR
    monkeypatch.setenv("FEDSAR_CACHE", str(tmp_path / "old"))
    assert cache_dir() == tmp_path / "cache"  # the documented name wins
    monkeypatch.delenv("FEDSAR_CACHE_DIR")
    assert cache_dir() == tmp_path / "old"
    monkeypatch.delenv("FEDSAR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedsar"


def test_the_recipe_fills_every_key_and_freezes_every_block(tmp_path):
    model = _cached_model()
    settings = settings_from_args(parse(), "fsar", tmp_path / "run")
    assert settings.frozen_blocks == 4  # the tiny model's four blocks
    assert (settings.batch_size, settings.learning_rate, settings.local_epochs) == (128, 0.005, 5)
    assert settings.group_heads and settings.keep_optimizer_state
    assert json.loads(settings.extra["model-overrides"]) == {"statistics": True, "statistics_projection": False}
    assert settings.extra["dp-accountant"] == "prv" and settings.head_start == "class-means"
    assert Path(settings.extra["initial-model"]) == model
    # copies for the sites that augment; no site of the tiny scenario does, and the run is not refused
    assert (settings.augment_multiplicity, settings.augment_pool) == (4, 32)


def test_copies_asked_for_explicitly_are_still_refused_where_no_site_augments(tmp_path):
    _cached_model()
    with pytest.raises(UserError, match="augment-multiplicity = 4 is for the sites that augment, and no site"):
        settings_from_args(parse("--set", "augment-multiplicity=4"), "fsar", tmp_path / "run")


def test_under_the_recipe_only_a_site_that_augments_trains_on_pooled_copies(tmp_path):
    from client.site import round_train_config

    _cached_model()
    config = settings_from_args(parse(), "fsar", tmp_path / "run").to_run_config()
    augmenting = round_train_config(config, seed=1, site_recipe={"augment-rotate": 60.0})
    plain = round_train_config(config, seed=1, site_recipe={})
    assert (augmenting.augment_multiplicity, augmenting.augment_pool) == (4, 32)
    assert plain.augment_multiplicity == 1 and not plain.augmentation.active


def test_options_given_explicitly_win_over_the_recipe(tmp_path):
    _cached_model()
    args = parse("--batch-size", "32", "--frozen-blocks", "2", "--set", "dp-accountant=rdp",
                 "--set", 'model-overrides={"dropout": 0.1}')
    settings = settings_from_args(args, "fsar", tmp_path / "run")
    assert (settings.batch_size, settings.frozen_blocks, settings.learning_rate) == (32, 2, 0.005)
    assert settings.extra["dp-accountant"] == "rdp"
    assert json.loads(settings.extra["model-overrides"]) == {"statistics": True, "statistics_projection": False, "dropout": 0.1}


def test_an_explicit_initial_model_is_used_and_nothing_is_built(tmp_path):
    own = _cached_model()
    moved = tmp_path / "mine.npz"
    own.rename(moved)
    settings = settings_from_args(parse("--initial-model", str(moved)), "fsar", tmp_path / "run")
    assert Path(settings.extra["initial-model"]) == moved
    assert not own.exists()  # the cache was not filled


def test_a_warm_start_that_leaves_a_frozen_block_random_is_refused(tmp_path):
    scenario = load_scenario(TINY)
    settings = RunSettings.from_run_config({**scenario.defaults, "scenario": str(TINY)})
    keys = list(initial_arrays(scenario, settings, model_config_for(scenario, "slim", {"statistics": True}),
                               client_policy("fsar", scenario.shared_label_set)).keys())
    block_key = next(k for k in keys if k.startswith("blocks.0.") and parameter_kind(k) == "backbone")
    _cached_model(drop=block_key)
    with pytest.raises(UserError, match=rf"global.npz: frozen-blocks = 4 freezes .*{block_key}"):
        settings_from_args(parse(), "fsar", tmp_path / "run")
    # a shallower freeze leaves that block to training, so the same file is fine
    assert settings_from_args(parse("--frozen-blocks", "0"), "fsar", tmp_path / "run").frozen_blocks == 0


def test_fedavg_may_start_from_an_fsar_warm_start_without_the_personal_topologies(tmp_path):
    """An fsar run's global model holds no unique topologies or topology weights (they
    stay on the sites); fedavg shares them, and starts them where FSAR starts every site."""
    _cached_model()  # written from fsar's shared part
    settings = settings_from_args(parse("--strategy", "fedavg"), "fedavg", tmp_path / "run")
    assert settings.frozen_blocks == 4 and settings.strategy == "fedavg"


@pytest.mark.slow
def test_the_synthetic_warm_start_is_built_once_by_the_real_job(capfd):
    built = synthetic_warm_start("cpu", rounds=1)
    out, err = capfd.readouterr()
    assert out == "" and "building the synthetic warm start" in err  # stdout stays the caller's
    assert built.is_file() and built.parent.name.startswith("synthetic-")
    stamp = built.stat().st_mtime_ns
    assert synthetic_warm_start("cpu", rounds=1) == built
    assert built.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in built.parent.parent.iterdir()] == [built.parent.name]  # no staging folder left


def test_the_warm_start_job_runs_one_thread_per_site_whatever_the_caller_set():
    caller = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "8", "FEDSAR_CACHE": "/somewhere"}
    child = one_thread_environment(caller)
    assert child == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FEDSAR_CACHE": "/somewhere"}
    assert caller["OMP_NUM_THREADS"] == "2"  # the caller's own environment is left as it was


def test_the_private_recipe_command_prints_a_run_table_a_coordinator_can_load(capsys, tmp_path):
    import tomllib

    from server.settings import with_scenario_defaults
    from simulations.cli import main

    model = _cached_model()
    assert main(["private-recipe", "--scenario", str(TINY)]) == 0
    keys = tomllib.loads(capsys.readouterr().out)
    assert keys["initial-model"] == str(model) and keys["frozen-blocks"] == 4
    assert keys["group-heads"] is True and keys["dp-accountant"] == "prv" and keys["learning-rate"] == 0.005
    assert json.loads(keys["model-overrides"]) == {"statistics": True, "statistics_projection": False}
    # a coordinator's [run] with these keys and the same scenario trains what fedsar-sim does
    settings = RunSettings.from_run_config(with_scenario_defaults({**keys, "scenario": str(TINY)}))
    assert (settings.frozen_blocks, settings.batch_size, settings.keep_optimizer_state) == (4, 128, True)
    assert settings.head_start == "class-means"
    assert (keys["augment-multiplicity"], keys["augment-pool"]) == (4, 32)
    deployed = settings.to_run_config()
    simulated = settings_from_args(parse(), "fsar", tmp_path).to_run_config()
    differing = {k: (deployed.get(k), v) for k, v in simulated.items() if deployed.get(k) != v}
    assert set(differing) <= {"out-dir", "device"}, differing  # where the simulation writes and trains


def test_the_printed_keys_of_a_scenario_the_warm_start_does_not_fit_are_refused(capsys):
    """The cached warm start holds the tiny model (four blocks of 16-32 channels); the
    label-groups scenario builds the same, the synthetic one a wider model: its frozen
    blocks would stay random, so the command names the scenario and prints no keys."""
    from simulations.cli import main

    _cached_model()
    assert main(["private-recipe", "--scenario", str(Path(__file__).parent / "scenarios" / "label-groups.toml")]) == 0
    capsys.readouterr()
    assert main(["private-recipe", "--scenario", "synthetic"]) != 0
    captured = capsys.readouterr()
    assert "scenario 'synthetic'" in captured.err and "frozen-blocks = 4 freezes" in captured.err
    assert "initial-model =" not in captured.out
