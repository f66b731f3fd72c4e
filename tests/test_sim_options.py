"""``fedsar-sim run``/``compare`` options that shape the engine and the comparison table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from simulations.compare import comparison_table, differences_table, paired_against, summarize_runs
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


@pytest.mark.parametrize("key,value,message", [
    ("num-server-rounds", 0, "'num-server-rounds': 0 must be at least 1"),
    ("batch-size", 0, "'batch-size': 0 must be at least 1"),
    ("learning-rate", "nan", "'learning-rate': nan must be positive"),
    ("fraction-train", 1.5, r"'fraction-train': 1.5 must be in \(0, 1\]"),
    ("local-epochs", -1, "'local-epochs': -1 must be 0 or more"),
    ("eval-every", 0, "'eval-every': 0 must be at least 1"),
    ("timeout-s", 0, "'timeout-s': 0.0 must be positive"),
    ("device", "gpu0", "'device': 'gpu0' must be auto, cpu, cuda or cuda:N"),
])
def test_run_settings_out_of_range_are_refused_by_name(key, value, message):
    from server.settings import RunSettings

    with pytest.raises(ValueError, match=message):
        RunSettings.from_run_config({key: value})
    assert RunSettings.from_run_config({"num-server-rounds": 1, "local-epochs": 0}).num_server_rounds == 1


def test_a_mistyped_run_config_key_is_refused_with_the_nearest_known_one(tmp_path):
    import re

    from server.settings import RunSettings

    with pytest.raises(ValueError, match="'dp-epsilion' is not a fedsar run-config key; did you mean 'dp-epsilon'"):
        RunSettings.from_run_config({"dp-epsilion": 8})
    with pytest.raises(UserError, match="'augment-multiplicty' is not .*did you mean 'augment-multiplicity'"):
        settings_from_args(parse("--set", "augment-multiplicty=4"), "fsar", tmp_path)
    with pytest.raises(ValueError, match="'zz' is not a fedsar run-config key .*Run config"):
        RunSettings.from_run_config({"zz": 1})
    examples = Path(__file__).resolve().parents[1] / "deploy" / "examples"
    scenario = tmp_path / "typo.toml"
    scenario.write_text((examples / "tiny-scenario.toml").read_text().replace("batch-size = 16", "batch-sise = 16"))
    with pytest.raises(UserError, match=r"typo.toml: \[defaults\]: run config 'batch-sise' .*'batch-size'"):
        settings_from_args(parse("--scenario", str(scenario)), "fsar", tmp_path)
    # every key a run reads is accepted, and docs/DESIGN.md's "Run config" lists exactly those
    known = RunSettings.known_keys()
    assert RunSettings.from_run_config({"secagg-timeout": 30, "central-dp-delta": 1e-6, "model-overrides": "{}"})
    design = (Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md").read_text()
    section = design.split("## Run config", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([a-z][a-z0-9]*(?:-[a-z0-9]+)*)`", section)) - {"set", "run", "fedsar-server"}
    assert listed == known, (sorted(listed - known), sorted(known - listed))


def test_a_device_this_machine_lacks_is_refused_before_the_engine_starts(tmp_path):
    import torch

    with pytest.raises(UserError, match="'device': 'tpu' must be auto, cpu, cuda or cuda:N"):
        settings_from_args(parse("--device", "tpu"), "fsar", tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device 'cuda' requested but CUDA is not available here"):
            settings_from_args(parse("--device", "cuda"), "fsar", tmp_path)
    assert settings_from_args(parse("--device", "cpu"), "fsar", tmp_path).device == "cpu"


def test_a_run_where_every_site_failed_is_an_error_naming_the_sites_error():
    from simulations.run import check_some_site_trained

    report = ("node-1: site reported an error: <class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\n"
              "  File \"client/trainer.py\", line 148, in resolve_device\n"
              "ValueError: device 'cuda:3' requested but CUDA is not available here\n\n"
              "flwr.clientapp.client_app.ClientAppException: \n"
              "Exception ClientAppException occurred. Message: device 'cuda:3' ...'>")
    failed = {"rounds": [{"sites_ok": 0, "dropped": [report, report]}, {"sites_ok": 0, "dropped": [report]}]}
    with pytest.raises(UserError, match="no site trained in any round; the first site error: ValueError: "
                                        "device 'cuda:3' requested but CUDA is not available here"):
        check_some_site_trained(failed)
    check_some_site_trained({"rounds": [{"sites_ok": 0, "dropped": [report]}, {"sites_ok": 2, "dropped": []}]})
    # one site failing in every round while the others train: its data never loaded
    unknown = report.replace("device 'cuda:3' requested but CUDA is not available here", "unknown data set 'msr-action3D'")
    with pytest.raises(UserError, match="1 site failed in every round, so the table covers only the others; "
                                        "the first error: ValueError: unknown data set 'msr-action3D'"):
        check_some_site_trained({"rounds": [{"sites_ok": 1, "dropped": [unknown]}, {"sites_ok": 1, "dropped": [unknown]}]})
    declined = "site-a: declined the round: round 3 would raise epsilon from 7.99 to 8.41, over the budget 8"
    check_some_site_trained({"rounds": [{"sites_ok": 0, "dropped": [declined]}]})  # a decline is no failure


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
    diffs = paired_against(runs, {"fedavg": "fsar"})
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
    assert paired_against({"fsar": runs["fsar"][:1], "fedavg": runs["fedavg"][:1]}, {"fedavg": "fsar"}) == {}


def _private_result(seed: int, mean: float, epsilons: list[float] | None) -> dict:
    result = _result(seed, mean, mean)
    if epsilons is not None:
        result["privacy"] = {"sites": {f"s{i}": {"epsilon": e, "dp": 1.0, "declined_rounds": i}
                                       for i, e in enumerate(epsilons)}}
    return result


def test_epsilons_parse_to_dp_epsilon_texts_and_bad_levels_are_named():
    from simulations.compare import parse_epsilons, variant_folder, variant_name

    assert parse_epsilons("1, 3,8.0,INF") == ["1", "3", "8", "inf"]
    for bad in ("0", "-1", "eight", "nan", "8,8"):
        with pytest.raises(UserError, match="--epsilons"):
            parse_epsilons(bad)
    assert variant_name("fsar", "8") == "fsar, epsilon 8" and variant_folder("fsar", "8") == "fsar-eps8"
    assert variant_name("fsar", "inf") == "fsar, no DP" and variant_folder("fsar", "inf") == "fsar-nodp"
    assert variant_name("fsar", None) == variant_folder("fsar", None) == "fsar"  # without --epsilons, as before
    from simulations.compare import parse_seeds

    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in (",", "0,one"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_privacy_cost_pairs_each_private_run_with_its_own_strategy_without_dp():
    from simulations.compare import count_within, paired_against, privacy_table

    runs = {
        "fsar, epsilon 8": [_private_result(0, 0.50, [7.9, 8.0]), _private_result(1, 0.56, [7.95, 7.99])],
        "fsar, no DP": [_private_result(0, 0.60, None), _private_result(1, 0.62, None)],
        "fedavg, epsilon 8": [_private_result(0, 0.40, [7.5, 8.0]), _private_result(1, 0.41, [8.0, 8.0])],
        "fedavg, no DP": [_private_result(0, 0.70, None), _private_result(1, 0.72, None)],
    }
    costs = paired_against(runs, {"fsar, epsilon 8": "fsar, no DP", "fedavg, epsilon 8": "fedavg, no DP"})
    assert costs["fsar, epsilon 8"]["global + personal"]["differences"] == pytest.approx([-0.10, -0.06])
    assert costs["fedavg, epsilon 8"]["global + personal"]["differences"] == pytest.approx([-0.30, -0.31])
    count_within(costs, 0.08)
    fsar = costs["fsar, epsilon 8"]["global + personal"]
    assert fsar["within_goal"] == 1 and not fsar["interval_within_goal"]  # -10 misses 8 points, -6 makes it
    count_within(costs, 0.10)  # -10.0 is within 10 points
    assert costs["fsar, epsilon 8"]["global + personal"]["within_goal"] == 2
    edge = {"x": {"v": {"differences": [0.7 - 0.8], "ci95": [0.7 - 0.8, 0.0]}}}  # -0.10000000000000009
    count_within(edge, 0.10)
    assert edge["x"]["v"]["within_goal"] == 1 and edge["x"]["v"]["interval_within_goal"]
    assert costs["fedavg, epsilon 8"]["global + personal"]["within_goal"] == 0
    cost_rows = differences_table(costs, "the same strategy without DP", goal_points=10)
    assert "| ahead in | within 10 points in |" in cost_rows
    assert "| fsar, epsilon 8 | global + personal | -10.0, -6.0 | **-8.0** |" in cost_rows
    assert "| 0 of 2 | 2 of 2 |" in cost_rows and "| 0 of 2 | 0 of 2 |" in cost_rows
    table = privacy_table(runs)
    assert "| fsar, epsilon 8 | 7.900 to 8.000 | 2 |" in table
    assert "| fedavg, epsilon 8 | 7.500 to 8.000 | 2 |" in table
    assert "no DP" not in table
    assert privacy_table({"fsar": [_private_result(0, 0.5, None)]}) == ""


def test_a_finished_run_is_read_back_only_when_complete_with_the_same_settings(tmp_path):
    from simulations.compare import finished_run

    settings = {"seed": 0, "dp-epsilon": "8", "learning-rate": 0.005}
    path = tmp_path / "results.json"
    assert finished_run(tmp_path, settings) is None  # nothing there
    path.write_text(json.dumps({"settings": settings, "complete": False}))
    assert finished_run(tmp_path, settings) is None  # interrupted
    path.write_text(json.dumps({"settings": settings, "complete": True, "final": {}}))
    assert finished_run(tmp_path, settings)["complete"] is True
    assert finished_run(tmp_path, {**settings, "dp-epsilon": "3"}) is None  # other settings
    path.write_text('{"settings": ')
    assert finished_run(tmp_path, settings) is None  # unreadable


def test_compare_refuses_to_replace_a_completed_run_made_with_other_settings(tmp_path):
    from simulations.compare import add_arguments, run, strategy_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--scenario", str(TINY), "--strategies", "fsar,fedavg", "--seeds", "0",
                              "--out", str(tmp_path)])
    earlier = strategy_settings(args, "fedavg", tmp_path / "fedavg-seed0").to_run_config()
    earlier["learning-rate"] = 0.01  # the same comparison made before with another learning rate
    (tmp_path / "fedavg-seed0").mkdir()
    (tmp_path / "fedavg-seed0" / "results.json").write_text(json.dumps({"settings": earlier, "complete": True}))
    with pytest.raises(UserError, match=r"fedavg-seed0 holds a completed run with other settings "
                                        r"\(learning-rate: 0.01 -> 0.002\): give another --out"):
        run(args)
    assert not (tmp_path / "fsar-seed0").exists()  # refused before any run


def test_epsilons_refuse_a_fixed_epsilon_or_noise_beside_them(tmp_path):
    from simulations.compare import add_arguments, run

    for extra in (["--dp-epsilon", "8"], ["--dp-noise-multiplier", "1.0"]):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(["--scenario", str(TINY), "--epsilons", "8,inf", "--out", str(tmp_path), *extra])
        with pytest.raises(UserError, match="--epsilons sets each run's DP-SGD target"):
            run(args)
    args = parser.parse_args(["--scenario", str(TINY), "--epsilons", "8,inf", "--privacy-goal", "-1",
                              "--out", str(tmp_path)])
    with pytest.raises(UserError, match="--privacy-goal must be a positive number of points, not -1"):
        run(args)


@pytest.mark.slow
def test_compare_over_epsilons_runs_each_level_writes_the_cost_and_resumes(tmp_path, capsys):
    """fedavg at epsilon 8 and without DP, two seeds, on Flower's simulation engine: the
    private runs spend at most their target, the no-DP runs none, the table pairs each
    private run with the no-DP run of its seed; a second call reads every run back."""
    from simulations.cli import main

    scenario = Path(__file__).parent / "scenarios" / "privacy-tiny.toml"
    argv = ["compare", "--scenario", str(scenario), "--device", "cpu", "--strategies", "fedavg",
            "--epsilons", "8,inf", "--seeds", "0,1", "--rounds", "1", "--dp-delta", "1e-5",
            "--dp-max-grad-norm", "1.0", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert set(report) >= {"fedavg, epsilon 8", "fedavg, no DP", "privacy_costs"}
    cost = report["privacy_costs"]["fedavg, epsilon 8"]["global + personal"]
    assert cost["seeds"] == [0, 1] and len(cost["differences"]) == 2
    for seed in (0, 1):
        private = json.loads((tmp_path / f"fedavg-eps8-seed{seed}" / "results.json").read_text())
        plain = json.loads((tmp_path / f"fedavg-nodp-seed{seed}" / "results.json").read_text())
        assert private["settings"]["dp-epsilon"] == "8" and plain["settings"]["dp-epsilon"] == "inf"
        assert all(0 < s["epsilon"] <= 8.0 and s["dp"] for s in private["privacy"]["sites"].values())
        assert not any(s.get("dp") for s in (plain["privacy"].get("sites") or {}).values())
    table = (tmp_path / "comparison.md").read_text()
    assert "| strategy minus the same strategy without DP |" in table and "| within 10 points in |" in table
    assert report["privacy_goal_points"] == 10 and 0 <= cost["within_goal"] <= 2
    assert "| fedavg, epsilon 8 | global + personal |" in table
    assert "| fedavg, epsilon 8 | " in table.split("epsilon spent by a site")[1]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")}
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("(read back from") == 4
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")} == stamps


def test_options_that_do_not_combine_are_refused_before_the_engine_starts(tmp_path):
    with pytest.raises(UserError, match="'group-heads' does not combine with: secure aggregation"):
        settings_from_args(parse("--secagg", "--group-heads"), "fsar", tmp_path)
    with pytest.raises(UserError, match="'group-heads' does not combine with: central DP"):
        settings_from_args(parse("--group-heads", "--central-dp-noise", "0.8", "--central-dp-clip", "5"), "fsar", tmp_path)
    assert settings_from_args(parse("--group-heads"), "fsar", tmp_path).group_heads


def test_a_coordinator_refuses_them_before_its_superlink_starts(tmp_path):
    import io

    from server.daemon import Coordinator, CoordinatorError
    from server.federation_config import load_federation_config

    config = load_federation_config(Path(__file__).resolve().parents[1] / "deploy" / "examples" / "federation.toml")
    config.state_dir = tmp_path / "state"
    config.run.update({"secagg": True, "group-heads": True})
    with pytest.raises(CoordinatorError, match=r"\[run\] run config 'group-heads' does not combine with: secure aggregation"):
        Coordinator(config, out=io.StringIO()).preflight()
    config.run.update({"secagg": False, "strategy": "fsr"})
    with pytest.raises(CoordinatorError, match=r"\[run\] strategy = 'fsr' is unknown; choose from fsar, fedavg"):
        Coordinator(config, out=io.StringIO()).preflight()


def test_an_epsilon_too_small_for_the_statistics_release_is_refused_before_round_1(tmp_path):
    statistics = ("--set", 'model-overrides={"statistics": true}')
    with pytest.raises(UserError, match="dp-epsilon 0.3: no noise keeps the statistics scale release within"):
        settings_from_args(parse(*statistics, "--dp-epsilon", "0.3", "--set", "dp-accountant=rdp"), "fsar", tmp_path)
    # the PRV accountant shows it; without the branch there is no release
    assert settings_from_args(parse(*statistics, "--dp-epsilon", "0.3", "--set", "dp-accountant=prv"), "fsar", tmp_path)
    assert settings_from_args(parse("--dp-epsilon", "0.3", "--set", "dp-accountant=rdp"), "fsar", tmp_path)


def test_a_scenario_site_with_an_unknown_data_set_is_refused_when_the_scenario_loads(tmp_path):
    scenario = tmp_path / "mine.toml"
    scenario.write_text(TINY.read_text().replace('dataset = "synthetic"', 'dataset = "msr-action3D"', 1))
    with pytest.raises(UserError, match=r"mine.toml.*dataset 'msr-action3D' is unknown; known: .*msr-action3d"):
        settings_from_args(parse("--scenario", str(scenario)), "fsar", tmp_path)


def test_run_settings_no_run_can_take_are_refused_before_the_engine_starts(tmp_path):
    with pytest.raises(UserError, match="run config 'lr-schedule' 'cosin' unknown; choose from constant, cosine"):
        settings_from_args(parse("--set", "lr-schedule=cosin"), "fsar", tmp_path)
    with pytest.raises(UserError, match="'personal-epochs' > 0 is not available with DP-SGD"):
        settings_from_args(parse("--personal-epochs", "1", "--dp-epsilon", "8"), "fsar", tmp_path)
    scenario = tmp_path / "typo.toml"
    scenario.write_text(TINY.read_text().replace("temporal_kernel", "temporal_kernal"))
    assert "temporal_kernal" in scenario.read_text()
    with pytest.raises(UserError, match=r"typo.toml: \[model\]: model config has unknown fields: temporal_kernal"):
        settings_from_args(parse("--scenario", str(scenario)), "fsar", tmp_path)


def test_a_misspelt_synthetic_option_is_named():
    from skeletons.datasets import load_dataset

    with pytest.raises(ValueError, match="synthetic data set options: .*num_clases"):
        load_dataset("synthetic", num_clases=4)
