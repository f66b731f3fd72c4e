"""``fedsar-sim run``/``compare`` options that shape the engine and the comparison table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from simulations.compare import comparison_table, differences_table, paired_differences, summarize_runs
from simulations.run import add_arguments, scenario_for_engine, settings_from_args
from skeletons.clikit import UserError

TINY = Path(__file__).parent / "scenarios" / "tiny.toml"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--scenario", str(TINY), *argv])


def test_site_cpus_overrides_every_site(tmp_path):
    args = parse("--site-cpus", "2")
    scenario = scenario_for_engine(args, settings_from_args(args, "fsar", tmp_path))
    assert [s.num_cpus for s in scenario.sites] == [2.0, 2.0]
    args = parse()
    scenario = scenario_for_engine(args, settings_from_args(args, "fsar", tmp_path))
    assert [s.num_cpus for s in scenario.sites] == [1.0, 1.0]  # the scenario's own value


def test_site_cpus_must_be_positive(tmp_path):
    args = parse("--site-cpus", "0")
    with pytest.raises(UserError, match="--site-cpus"):
        scenario_for_engine(args, settings_from_args(args, "fsar", tmp_path))


@pytest.mark.parametrize("option,field", [("shared-blocks", "shared_blocks"), ("frozen-blocks", "frozen_blocks")])
def test_block_depth_options_reach_the_settings_and_must_fit_the_model(tmp_path, option, field):
    assert getattr(settings_from_args(parse(f"--{option}", "2"), "fsar", tmp_path), field) == 2
    assert getattr(settings_from_args(parse(), "fsar", tmp_path), field) == 0
    with pytest.raises(UserError, match=f"{option} = 9, but the model has 4 blocks"):
        settings_from_args(parse(f"--{option}", "9"), "fsar", tmp_path)
    with pytest.raises(UserError, match=f"{option} must be >= 0"):
        settings_from_args(parse(f"--{option}", "-1"), "fsar", tmp_path)


def test_frozen_parameters_are_the_input_stage_and_the_first_blocks():
    from models.roles import is_frozen

    assert is_frozen("input_norm.weight", 1) and is_frozen("blocks.0.gcn.conv.weight", 1)
    assert is_frozen("_module.blocks.1.tcn.conv.weight", 2)  # as Opacus's wrapper names it
    assert not is_frozen("blocks.2.tcn.conv.weight", 2)
    assert not is_frozen("head.weight", 4) and not is_frozen("blocks.0.gcn.conv.weight", 0)


def _result(seed: int, a: float, b: float, trained: float = 0.9) -> dict:
    return {
        "scenario": "tiny", "settings": {"seed": seed},
        "sites": {"a": {"final_accuracy": a, "trained_accuracy": trained},
                  "b": {"final_accuracy": b, "trained_accuracy": trained}},
        "final": {"mean_accuracy": (a + b) / 2, "mean_trained_accuracy": trained, "overhead_ratio": 1.1},
        "rounds": [{"uplink_bytes": 1_000_000}],
    }


def test_comparison_reports_mean_and_spread_over_seeds():
    summary = summarize_runs({"fsar": [_result(0, 0.5, 0.3), _result(1, 0.7, 0.5)]})
    assert summary["fsar"]["mean_accuracy"]["mean"] == pytest.approx(0.5)
    assert summary["fsar"]["mean_accuracy"]["std"] == pytest.approx(0.1)
    assert summary["fsar"]["sites"]["a"]["mean"] == pytest.approx(0.6)
    table = comparison_table(summary)
    assert "| fsar | global + personal | 60.0 ± 10.0 | 40.0 ± 10.0 | **50.0 ± 10.0** | 1.00 MB | 1.10 |" in table
    assert "| fsar | after local training | 90.0 ± 0.0 | 90.0 ± 0.0 | **90.0 ± 0.0** |" in table


def test_comparison_without_trained_accuracy_has_one_view():
    old = _result(0, 0.5, 0.3)
    old["final"].pop("mean_trained_accuracy")
    for site in old["sites"].values():
        site.pop("trained_accuracy")
    table = comparison_table(summarize_runs({"fedavg": [old]}))
    assert "global + personal" in table and "after local training" not in table


def test_comparison_pairs_strategies_by_seed():
    """fedavg minus fsar seed by seed: differences, their mean, a t-interval and the seeds
    ahead; a seed only one of them ran is left out."""
    runs = {
        "fsar": [_result(0, 0.5, 0.3, 0.6), _result(1, 0.7, 0.5, 0.6), _result(2, 0.6, 0.4, 0.6)],
        "fedavg": [_result(1, 0.8, 0.6, 0.5), _result(0, 0.6, 0.4, 0.5), _result(2, 0.5, 0.3, 0.5),
                   _result(7, 0.9, 0.9)],
    }
    diffs = paired_differences(runs, "fsar")
    d = diffs["fedavg"]["global + personal"]
    assert d["seeds"] == [0, 1, 2]
    assert d["differences"] == pytest.approx([0.1, 0.1, -0.1])
    assert d["mean"] == pytest.approx(0.1 / 3)
    # t(0.975, 2) = 4.303; sample stdev of (0.1, 0.1, -0.1) = 0.11547
    half = 4.303 * 0.11547 / 3 ** 0.5
    assert d["ci95"] == pytest.approx([0.1 / 3 - half, 0.1 / 3 + half], rel=1e-3)
    assert d["ahead"] == 2
    trained = diffs["fedavg"]["after local training"]
    assert trained["differences"] == pytest.approx([-0.1] * 3) and trained["ahead"] == 0
    table = differences_table(diffs, "fsar")
    assert "| fedavg | global + personal | +10.0, +10.0, -10.0 | **+3.3** | -25.4 to +32.0 | 2 of 3 |" in table
    assert paired_differences({"fsar": runs["fsar"][:1], "fedavg": runs["fedavg"][:1]}, "fsar") == {}
