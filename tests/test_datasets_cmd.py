"""``fedsar-sim datasets``: the summary of what is under a data root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSAR_CACHE_DIR", str(tmp_path / "cache"))


def write_msr(folder: Path, name: str, frames: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(frames).normal(size=(frames * 20, 3)) + 1.0
    path = folder / f"{name}_skeleton3D.txt"
    path.write_text("".join(f"{x:.5f} {y:.5f} {z:.5f} 1\n" for x, y, z in values))
    return path


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["datasets", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_counts_skipped_and_missing_on_a_small_root(tmp_path, capsys):
    msr = tmp_path / "root" / "msr-action3d"
    write_msr(msr, "a01_s01_e01", 10)
    write_msr(msr, "a02_s02_e01", 30)
    write_msr(msr, "a02_s03_e02", 20)
    bad = write_msr(msr, "a05_s04_e01", 5)
    bad.write_text(bad.read_text() + "0.1 0.2\n")
    code, report = run_json(capsys, "--data-root", str(tmp_path / "root"))
    assert code == 0
    summary = report["datasets"]["msr-action3d"]
    assert (summary["sequences"], summary["classes"], summary["subjects"], summary["views"]) == (3, 20, 3, 0)
    assert summary["frames"] == {"min": 10, "median": 20.0, "max": 30}
    assert summary["skipped"] == 1 and summary["skipped_files"][0]["path"] == str(bad)
    assert "line 101" in summary["skipped_files"][0]["reason"]
    assert report["missing"] == ["nw-ucla", "kinder-gator", "ntu"]

    assert main(["datasets", "--data-root", str(tmp_path / "root")]) == 0
    table = capsys.readouterr().out
    assert "msr-action3d" in table and "10/20/30" in table
    assert f"skipped {bad}" in table and "not found under" in table


def test_no_data_set_is_a_user_error(tmp_path, capsys):
    assert main(["datasets", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "nw-ucla" in err and "kinder-gator" in err


def test_on_error_raise_reports_the_data_set_as_failed(tmp_path, capsys):
    msr = tmp_path / "msr-action3d"
    bad = write_msr(msr, "a01_s01_e01", 3)
    bad.write_text("x y z c\n")
    code, report = run_json(capsys, "--data-root", str(tmp_path), "--on-error", "raise")
    assert code == 1 and str(bad) in report["datasets"]["msr-action3d"]["error"]


def test_counts_on_real_data(data_root, capsys):
    code, report = run_json(capsys, "--data-root", str(data_root))
    assert code == 0
    sets = report["datasets"]
    assert {k: (v["sequences"], v["classes"], v["subjects"], v["views"]) for k, v in sets.items()
            if k != "ntu"} == {
        "nw-ucla": (1484, 10, 10, 3),
        "msr-action3d": (567, 20, 10, 0),
        "kinder-gator": (1159, 58, 20, 0),
    }
    assert sets["msr-action3d"]["in_cvpr12_protocol"] == 557
    assert sets["kinder-gator"]["subjects_by_group"] == {"adult": 10, "child": 10}
    assert sets["nw-ucla"]["frames"]["min"] == 1 and sets["nw-ucla"]["frames"]["max"] == 201
    assert all(v["skipped"] == 0 for v in sets.values())
    # a second run reads the parsed data sets from the cache and reports the same
    assert run_json(capsys, "--data-root", str(data_root))[1]["datasets"] == sets
