"""The fsar-paper benchmark on generated stand-ins of its five data sets.

The stand-ins are written in the data sets' own formats and must come back through the
real readers with the counts and published splits they were written with; the scenario
then runs end to end through ``fedsar-sim run`` on CPU with a small network, and what
reached the server must hold no personal parameter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from models.roles import PERSONAL_KINDS, parameter_kind
from simulations.cli import main as sim_main
from simulations.cost import FULL_SCALE, ModelCost, estimate, measure
from simulations.standins import SITES, check_paths, paths_toml, write_standins
from skeletons.datasets import load_dataset
from skeletons.partition import train_test_split
from skeletons.standard_splits import split_dataset

# site -> (reader, sequences, classes of the reader, subjects, xsub train, xsub test)
EXPECTED = {
    "ntu60": ("pyskl", 108, 60, 6, 54, 54),
    "ntu120": ("ntu", 72, 120, 6, 36, 36),
    "pku-mmd-1": ("pku-mmd", 108, 51, 6, 72, 36),
    "pku-mmd-2": ("pku-mmd", 60, 41, 5, 48, 12),
    "uestc": ("uestc", 96, 40, 8, None, None),
}
# A network small enough for a CPU test; the scenario's own one is CTR-GCN sized.
SMALL_MODEL = '{"channels": [8, 16], "strides": [2, 2], "temporal_kernel": 3, "norm_groups": 4}'


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    return write_standins(tmp_path_factory.mktemp("standins"), seed=0)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Parsed-data cache entries go to a temporary folder, not the user's."""
    monkeypatch.setenv("FEDSAR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _load(standin):
    return load_dataset(standin.format, standin.path, **standin.options)


def test_paths_file_names_every_site_with_its_format(standins):
    import tomllib

    entries = tomllib.loads(standins.paths_file.read_text())
    assert list(entries) == list(SITES)
    for site, (reader, *_rest) in EXPECTED.items():
        assert entries[site]["format"] == reader
        assert Path(entries[site]["path"]).is_absolute() and Path(entries[site]["path"]).exists()
    assert entries["pku-mmd-1"]["options"] == {"part": 1}
    assert entries["pku-mmd-2"]["options"] == {"part": 2}


@pytest.mark.parametrize("site", SITES)
def test_standin_reads_back_with_expected_counts_and_split(standins, site):
    reader, sequences, classes, subjects, train, test = EXPECTED[site]
    standin = standins.by_site()[site]
    data = _load(standin)
    assert standin.format == reader
    assert (len(data), data.num_classes, len(set(data.subjects))) == (sequences, classes, subjects)
    assert data.skipped == [] and data.layout.name == "ntu25"
    assert len(set(data.labels.tolist())) == 6
    if train is None:  # UESTC: the scenario's seeded 30% subject split
        part_train, part_test = train_test_split(data, test_fraction=0.3, by="subject")
    else:  # NTU: performer ids in the names; PKU-MMD: the cross-subject list
        part_train, part_test = split_dataset(data, "xsub")
        assert (len(part_train), len(part_test)) == (train, test)
    assert len(part_train) and len(part_test)
    assert not set(part_train.subjects) & set(part_test.subjects)


@pytest.mark.parametrize("site", ["ntu60", "ntu120", "pku-mmd-1"])
def test_interaction_classes_carry_a_second_person(standins, site):
    data = _load(standins.by_site()[site])
    two = [s for s in data if s.joints.shape[1] == 2 and np.abs(s.joints[:, 1]).sum() > 0]
    assert two, "no sample with a second person"
    assert len({s.label for s in two}) == 1  # only the interaction class has a partner
    first, second = two[0].joints[:, 0], two[0].joints[:, 1]
    assert np.linalg.norm(first.mean(axis=(0, 1)) - second.mean(axis=(0, 1))) > 0.5


def test_ntu60_standin_splits_agree_with_the_published_rule(standins):
    data = _load(standins.by_site()["ntu60"])
    for sample in data:
        by_list = sample.meta["split_xsub"]
        assert by_list == ("train" if int(sample.subject) in {1, 2, 4} else "test")
        assert sample.meta["camera"] in (1, 2, 3)


def test_sites_read_the_standins_through_the_scenario(standins):
    counts = check_paths(standins.paths_file)
    assert set(counts) == set(SITES)
    for site, (_, sequences, _, _, train, test) in EXPECTED.items():
        if train is not None:
            assert counts[site] == (train, test)
        assert sum(counts[site]) == sequences


def test_same_seed_same_standins(tmp_path, standins):
    again = write_standins(tmp_path, seed=0, sites=["ntu60"])
    assert again.by_site()["ntu60"].path.read_bytes() == standins.by_site()["ntu60"].path.read_bytes()


def test_existing_standin_folder_is_not_overwritten_silently(tmp_path):
    write_standins(tmp_path, sites=["uestc", "pku-mmd-2"])
    with pytest.raises(FileExistsError, match="uestc"):
        write_standins(tmp_path, sites=["uestc", "pku-mmd-2"])
    replaced = write_standins(tmp_path, sites=["uestc", "pku-mmd-2"], replace=True, seed=1)
    assert replaced.by_site()["uestc"].sequences == 96


def test_standins_command_writes_and_names_the_paths_file(tmp_path, capsys):
    rc = sim_main(["standins", "--out", str(tmp_path), "--sites", "pku-mmd-2,uestc"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"paths file: {tmp_path / 'paths.toml'}" in out
    assert "156 sequences (read back" in out
    assert sim_main(["standins", "--out", str(tmp_path), "--sites", "uestc"]) == 2
    assert "--replace" in capsys.readouterr().err


def _paths_file(tmp_path: Path, standins, sites) -> Path:
    path = tmp_path / "paths.toml"
    path.write_text(paths_toml(s for s in standins.standins if s.site in sites))
    return path


def test_paths_file_with_fewer_than_two_sites_fails_clearly(tmp_path, standins, capsys):
    paths = _paths_file(tmp_path, standins, ["ntu60"])
    rc = sim_main(["run", "--scenario", "fsar-paper", "--paths", str(paths), "--rounds", "1",
                   "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "at least two data sets" in err and "ntu60" in err
    assert "missing: ntu120, pku-mmd-1, pku-mmd-2, uestc" in err
    assert not (tmp_path / "run" / "results.json").exists()


def _run(paths: Path, out: Path) -> dict:
    rc = sim_main([
        "run", "--scenario", "fsar-paper", "--paths", str(paths), "--rounds", "1", "--device", "cpu",
        "--batch-size", "16", "--set", "local-epochs=1", "--set", f"model-overrides={SMALL_MODEL}",
        "--out", str(out),
    ])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_fsar_paper_runs_on_all_five_standins(tmp_path, standins):
    results = _run(standins.paths_file, tmp_path / "run")
    assert results["scenario"] == "fsar-paper" and results["strategy"] == "fsar"
    assert set(results["sites"]) == set(SITES)
    for site, (*_, train, test) in EXPECTED.items():
        entry = results["sites"][site]
        assert 0.0 <= entry["final_accuracy"] <= 1.0
        if test is not None:
            assert entry["test_examples"] == test
    assert results["model"]["config"]["channels"] == [8, 16]
    received = results["uplink_parameters"]
    assert received, "nothing shared reached the server"
    leaked = [k for k in received if parameter_kind(k) in PERSONAL_KINDS["fsar"]]
    assert not leaked, f"personal parameters left the sites: {leaked[:5]}"
    assert "influence" in {parameter_kind(k) for k in received}


@pytest.mark.slow
def test_fsar_paper_skips_and_reports_missing_data_sets(tmp_path, standins, caplog):
    paths = _paths_file(tmp_path, standins, ["pku-mmd-2", "uestc"])
    with caplog.at_level(logging.WARNING, logger="skeletons.scenario"):
        results = _run(paths, tmp_path / "run")
    assert set(results["sites"]) == {"pku-mmd-2", "uestc"}
    assert results["sites"]["pku-mmd-2"]["test_examples"] == EXPECTED["pku-mmd-2"][5]
    reports = [r.getMessage() for r in caplog.records if r.name == "skeletons.scenario"]
    assert any("ntu60, ntu120, pku-mmd-1" in m and "skipped" in m for m in reports)


def test_cost_counts_a_training_step_as_about_three_forwards():
    cost = measure(overrides=json.loads(SMALL_MODEL), batch=2, cpu_steps=0)
    assert cost.parameters > 0 and cost.forward_flops > 0
    assert 2.5 < cost.train_flops_first_round / cost.forward_flops < 3.5
    assert cost.train_flops > 1.5 * cost.train_flops_first_round  # two distillation grains
    one_tensor = 4 * 8 * 32 * 25 * 2  # the first block's output for one sample, float32
    assert cost.activation_bytes > one_tensor
    assert cost.cpu_samples_per_s is None and cost.grains == [1, 2]


def test_cost_estimate_scales_with_the_data_sets():
    cost = ModelCost(config={}, num_frames=64, num_persons=2, parameters=1_000_000, forward_flops=1e9,
                     train_flops_first_round=3e9, train_flops=9e9, activation_bytes=2**20,
                     cpu_samples_per_s=10.0, cpu_threads=2, grains=[1, 2])
    est = estimate(cost, batch_size=32, local_epochs=2)
    by_site = {s["site"]: s for s in est["sites"]}
    ntu120 = next(s for s in FULL_SCALE if s.site == "ntu120")
    assert by_site["ntu120"]["train_pflop"] == pytest.approx(2 * ntu120.train * 9e9 / 1e15)
    assert by_site["ntu120"]["host_gib"] == pytest.approx((ntu120.train + ntu120.test) * 4 * 3 * 64 * 25 * 2 / 2**30)
    times = est["round"]["gpu_time_s"]["H100 SXM"]
    assert times["low"]["train_round_s"] > times["mid"]["train_round_s"] > times["high"]["train_round_s"]
    total_train = sum(s.train for s in FULL_SCALE)
    assert est["round"]["cpu_round_hours_here"] == pytest.approx(2 * total_train / 10.0 / 3600)
    assert "ESTIMATE" in est["label"]


@pytest.mark.parametrize("change, message", [
    (("[ntu60]", "[ntu60]\nopts = {}"), r"\[ntu60\] has unknown field\(s\) opts; known: path, format, options"),
    (('format = "', 'format = "x'), r"\[ntu60\] format 'x.*' is unknown; known: "),
])
def test_a_paths_file_entry_with_a_mistake_is_named(tmp_path, standins, capsys, change, message):
    import re

    paths = _paths_file(tmp_path, standins, ["ntu60", "uestc"])
    paths.write_text(paths.read_text().replace(*change, 1))
    rc = sim_main(["run", "--scenario", "fsar-paper", "--paths", str(paths), "--rounds", "1",
                   "--device", "cpu", "--out", str(tmp_path / "run")])
    assert rc == 2 and re.search(message, capsys.readouterr().err)


def test_the_skipped_sites_are_said_once_however_often_the_scenario_resolves(tmp_path, standins, caplog):
    import logging

    from skeletons.scenario import resolve_scenario

    paths = _paths_file(tmp_path, standins, ["ntu60", "uestc"])
    with caplog.at_level(logging.WARNING, logger="skeletons.scenario"):
        for _ in range(3):  # as fedsar-sim run does: its options, the engine, the ServerApp
            assert [s.name for s in resolve_scenario("fsar-paper", paths).sites] == ["ntu60", "uestc"]
    notices = [r for r in caplog.records if "they are skipped" in r.getMessage()]
    assert len(notices) == 1 and "ntu120, pku-mmd-1, pku-mmd-2" in notices[0].getMessage()
