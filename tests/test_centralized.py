"""``fedsar-sim centralized``: splits and an end-to-end run on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulations.centralized import split_indices
from skeletons.clikit import UserError
from skeletons.layouts import KINECT_V1, MSR_ACTION3D
from skeletons.sample import SkeletonDataset, SkeletonSample


def _dataset(name, layout, metas):
    samples = [SkeletonSample(np.zeros((4, 1, 20, 3), np.float32), i % 2, m) for i, m in enumerate(metas)]
    return SkeletonDataset(name, layout, ["a", "b"], samples)


def test_nw_ucla_cross_view_trains_on_views_1_and_2():
    ds = _dataset("nw-ucla", KINECT_V1, [{"subject": "1", "view": str(v)} for v in (1, 2, 3, 3, 1)])
    train, test = split_indices(ds, "cross-view", 0.3, 0)
    assert train == [0, 1, 4] and test == [2, 3]


def test_msr_cross_subject_uses_odd_subjects_and_the_protocol_list():
    metas = [
        {"subject": "1", "in_cvpr12_protocol": True},
        {"subject": "2", "in_cvpr12_protocol": True},
        {"subject": "3", "in_cvpr12_protocol": False},
        {"subject": "10", "in_cvpr12_protocol": True},
        {"subject": "9", "in_cvpr12_protocol": True},
    ]
    train, test = split_indices(_dataset("msr-action3d", MSR_ACTION3D, metas), "cross-subject", 0.3, 0)
    assert train == [0, 4] and test == [1, 3]


def test_subject_split_is_seeded_and_disjoint():
    ds = _dataset("kinder-gator", KINECT_V1, [{"subject": f"p{i % 6}"} for i in range(30)])
    train, test = split_indices(ds, "subject", 0.34, seed=5)
    assert (train, test) == split_indices(ds, "subject", 0.34, seed=5)
    subj = lambda idx: {ds.samples[i].subject for i in idx}  # noqa: E731
    assert not subj(train) & subj(test) and len(subj(test)) == 2
    with pytest.raises(UserError, match="cross-view needs views"):
        split_indices(ds, "cross-view", 0.3, 0)


@pytest.mark.slow
def test_centralized_synthetic_run_writes_results(tmp_path):
    from simulations.cli import main

    out = tmp_path / "run"
    # four epochs: the mild augmentation (the NW-UCLA default's strong rotation needs more)
    code = main(["centralized", "--out", str(out), "--epochs", "4", "--frames", "32",
                 "--device", "cpu", "--threads", "1", "--optimizer", "adamw", "--lr", "0.002",
                 "--rotate", "17", "--rotate-axes", "xyz", "--scale", "0.1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    chance = 1.0 / results["num_classes"]
    assert results["final"]["mean_accuracy"] > 2 * chance
    # the default: two members, each with its own four epochs
    assert [(h["member"], h["epoch"]) for h in results["history"]] == [(m, e) for m in (1, 2) for e in range(1, 5)]
    assert results["config"]["model"]["preset"] == "fast" and results["config"]["model"]["ensemble"] == 2
    assert results["config"]["train"]["epochs"] == 4 and results["params"] > 0
    assert results["config"]["train"]["rotate_axes"] == "xyz"  # the options given reach the trainer
    assert results["config"]["model"]["input_range"] is True  # the default recipe's rescaling
    assert results["config"]["model"]["temporal"] == "full"  # synthetic: the general recipe
    assert (out / "model.npz").is_file() and (out / "model.json").is_file()

    from models import load_model

    model = load_model(out / "model")
    assert model.num_classes == results["num_classes"]


@pytest.mark.slow
def test_centralized_ensemble_trains_members_from_consecutive_seeds(tmp_path):
    from models import load_model
    from simulations.cli import main

    out = tmp_path / "ens"
    code = main(["centralized", "--out", str(out), "--epochs", "2", "--frames", "24", "--ensemble", "2",
                 "--model", "fast", "--device", "cpu", "--threads", "1", "--seed", "3",
                 "--rotate", "17", "--rotate-axes", "xyz", "--scale", "0.1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["seed"] for m in results["members"]] == [3, 4]
    assert [(h["member"], h["epoch"]) for h in results["history"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert results["final"]["member_accuracy"] == [m["accuracy"] for m in results["members"]]
    assert results["config"]["model"]["preset"] == "fast" and results["config"]["model"]["ensemble"] == 2
    assert results["config"]["model"]["strides"][0] == 2
    first, second = load_model(out / "model"), load_model(out / "model-2")
    differs = any(not np.array_equal(p.detach().numpy(), q.detach().numpy())
                  for p, q in zip(first.parameters(), second.parameters()))
    assert differs  # two members, not one model saved twice
    assert results["params"] == 2 * sum(p.numel() for p in first.parameters())


def test_ensemble_below_one_is_refused(tmp_path):
    from simulations.cli import main

    assert main(["centralized", "--out", str(tmp_path / "x"), "--ensemble", "0"]) != 0
    assert not (tmp_path / "x" / "results.json").exists()


def test_default_recipe_is_the_measured_one():
    """The defaults are the NW-UCLA recipe recorded in BENCHMARKS.md; a change here
    must come with a new measurement."""
    import argparse

    from simulations.centralized import add_arguments, augmentation_for

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "x"])
    assert (args.optimizer, args.lr, args.epochs) == ("adamw", 0.002, 60)
    assert augmentation_for("nw-ucla", args) == {"rotate": 60.0, "rotate_axes": "xy", "scale": 0.3}
    assert augmentation_for("msr-action3d", args) == {"rotate": 17.0, "rotate_axes": "xyz", "scale": 0.1}
    given = parser.parse_args(["--out", "x", "--rotate", "0", "--no-input-range"])
    assert augmentation_for("msr-action3d", given)["rotate"] == 0.0  # an option given wins, even 0
    assert args.input_range is True and given.input_range is False
    from simulations.centralized import recipe_value

    args.dataset = "nw-ucla"
    assert recipe_value("nw-ucla", args, "temporal") == "full"
    assert (recipe_value("nw-ucla", args, "model"), recipe_value("nw-ucla", args, "ensemble")) == ("fast", 2)
    assert recipe_value("msr-action3d", args, "temporal") == "multiscale"
    assert recipe_value("msr-action3d", parser.parse_args(["--out", "x", "--temporal", "full"]), "temporal") == "full"
