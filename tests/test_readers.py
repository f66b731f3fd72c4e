"""Readers on small files written in each real format: values, metadata and errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from skeletons.datasets import LOADERS, dataset_folder, in_layout, load_dataset, loader
from skeletons.layouts import KINECT_V1, MSR_ACTION3D, NTU25
from skeletons.read_common import SkeletonFormatError
from skeletons.read_kindergator import (
    load_kindergator,
    parse_demographics,
    read_kindergator_file,
    sdk_column,
)
from skeletons.read_msr import load_msr_action3d, read_msr_file
from skeletons.read_npz import load_npz, read_npz_file, write_npz
from skeletons.read_ntu import load_ntu, read_ntu_file
from skeletons.read_nwucla import load_nwucla, read_nwucla_file
from skeletons.sample import SkeletonDataset, SkeletonSample


def motion(t: int, v: int, seed: int = 0) -> np.ndarray:
    """Distinct, recognisable coordinates: joint j at frame f is (j, f, seed) + 0.5."""
    f, j = np.meshgrid(np.arange(t), np.arange(v), indexing="ij")
    return np.stack([j + 0.5, f + 0.5, np.full_like(f, seed) + 0.5], -1).astype(np.float32)


# ------------------------------------------------------------------------------- NW-UCLA

def write_ucla(folder: Path, name: str, joints: np.ndarray, label: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    doc = {"file_name": name, "skeletons": joints.tolist()}
    if label is not None:
        doc["label"] = label
    path.write_text(json.dumps(doc))
    return path


def test_nwucla_reads_joints_and_name_fields(tmp_path):
    joints = motion(5, 20)
    path = write_ucla(tmp_path, "a11_s07_e02_v03", joints, label=9)
    sample = read_nwucla_file(path)
    assert sample.joints.shape == (5, 1, 20, 3)
    np.testing.assert_array_equal(sample.joints[:, 0], joints)
    assert sample.label == 8  # a11 is the 9th of the ten actions (a07, a10 absent)
    assert (sample.subject, sample.view, sample.meta["execution"]) == ("7", "3", 2)
    assert sample.meta["source"] == str(path)


def test_nwucla_truncated_json_names_file_and_line(tmp_path):
    path = write_ucla(tmp_path, "a01_s01_e00_v01", motion(3, 20))
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(SkeletonFormatError, match=r"a01_s01_e00_v01\.json, line 1: invalid JSON"):
        read_nwucla_file(path)


def test_nwucla_wrong_joint_count_names_field(tmp_path):
    path = write_ucla(tmp_path, "a01_s01_e00_v01", motion(3, 19))
    with pytest.raises(SkeletonFormatError) as err:
        read_nwucla_file(path)
    assert str(path) in str(err.value) and "'skeletons'" in str(err.value)
    assert "[3, 19, 3]" in str(err.value)


def test_nwucla_label_disagreeing_with_action_is_an_error(tmp_path):
    path = write_ucla(tmp_path, "a02_s01_e00_v01", motion(2, 20), label=5)
    with pytest.raises(SkeletonFormatError, match="field 'label'"):
        read_nwucla_file(path)


def test_nwucla_unknown_action_and_bad_name(tmp_path):
    with pytest.raises(SkeletonFormatError, match="unknown action a07"):
        read_nwucla_file(write_ucla(tmp_path, "a07_s01_e00_v01", motion(2, 20)))
    with pytest.raises(SkeletonFormatError, match="file name"):
        read_nwucla_file(write_ucla(tmp_path, "walk_s01", motion(2, 20)))


# ------------------------------------------------------------------------------------ MSR

def msr_text(frames: np.ndarray, confidence: float = 1.0) -> str:
    return "".join(f"{x:.6f} {y:.6f} {z:.6f} {confidence:.6f}\n" for x, y, z in frames.reshape(-1, 3))


def write_msr(folder: Path, name: str, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_skeleton3D.txt"
    path.write_text(msr_text(frames))
    return path


def test_msr_reads_frames_keeps_zero_frames_and_protocol_flag(tmp_path):
    frames = motion(4, 20)
    frames[2] = 0.0  # a frame the sensor lost: kept for preprocessing to drop
    path = write_msr(tmp_path, "a05_s03_e02", frames)
    sample = read_msr_file(path, protocol={"a05_s03_e02"})
    assert sample.joints.shape == (4, 1, 20, 3)
    np.testing.assert_allclose(sample.joints[:, 0], frames, atol=1e-6)
    assert sample.label == 4 and sample.subject == "3" and sample.meta["execution"] == 2
    assert sample.meta["in_cvpr12_protocol"] is True and sample.meta["zero_frames"] == 1
    assert read_msr_file(path, protocol=set()).meta["in_cvpr12_protocol"] is False


def test_msr_low_confidence_frames_become_nan_only_on_request(tmp_path):
    path = tmp_path / "a01_s01_e01_skeleton3D.txt"
    path.write_text(msr_text(motion(1, 20), 1.0) + msr_text(motion(1, 20), 0.1))
    assert not np.isnan(read_msr_file(path).joints).any()
    sample = read_msr_file(path, min_confidence=0.5)
    assert np.isnan(sample.joints[1]).all() and not np.isnan(sample.joints[0]).any()
    assert sample.meta["low_confidence_frames"] == 1


def test_msr_truncated_frame_names_file_and_line(tmp_path):
    path = write_msr(tmp_path, "a01_s01_e01", motion(3, 20))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:47]))  # third frame cut after 7 joints
    with pytest.raises(SkeletonFormatError) as err:
        read_msr_file(path)
    assert str(path) in str(err.value) and "line 47" in str(err.value)
    assert "truncated" in str(err.value)


def test_msr_bad_number_and_column_count_name_the_line(tmp_path):
    path = write_msr(tmp_path, "a01_s01_e01", motion(2, 20))
    lines = path.read_text().splitlines(keepends=True)
    lines[12] = "0.1 0.2 zero 1.0\n"
    path.write_text("".join(lines))
    with pytest.raises(SkeletonFormatError, match=r"_skeleton3D\.txt, line 13: value 3 is not a number: 'zero'"):
        read_msr_file(path)
    lines[12] = "0.1 0.2 0.3\n"
    path.write_text("".join(lines))
    with pytest.raises(SkeletonFormatError, match="line 13: expected 4 numbers, found 3"):
        read_msr_file(path)
    lines[12] = "0.1 1e39 0.3 1\n"  # overflows float32
    path.write_text("".join(lines))
    with pytest.raises(SkeletonFormatError, match="line 13: value 2 is infinite or too large"):
        read_msr_file(path)


def test_folder_load_skips_bad_file_and_reports_it(tmp_path, caplog):
    write_msr(tmp_path, "a01_s01_e01", motion(2, 20))
    write_msr(tmp_path, "a02_s02_e01", motion(3, 20))
    bad = write_msr(tmp_path, "a03_s03_e01", motion(2, 20))
    bad.write_text(bad.read_text().replace("0.500000 1.500000", "0.5 1.5.0", 1))
    (tmp_path / "files_used_in_cvpr12_paper.txt").write_text("a01_s01_e01\na03_s03_e01\n")
    with pytest.raises(SkeletonFormatError, match="a03_s03_e01"):
        load_msr_action3d(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = load_msr_action3d(tmp_path, on_error="skip")
    assert [s.meta["action"] for s in dataset] == ["a01", "a02"]
    assert [s.meta["in_cvpr12_protocol"] for s in dataset] == [True, False]
    assert len(dataset.skipped) == 1 and dataset.skipped[0].path == str(bad)
    assert "line 2" in dataset.skipped[0].reason
    assert "skipped 1 file(s)" in caplog.text and "a03_s03_e01" in caplog.text
    assert len(load_msr_action3d(tmp_path, on_error="skip", cvpr12_only=True)) == 1
    with pytest.raises(ValueError, match="on_error"):
        load_msr_action3d(tmp_path, on_error="ignore")


# ---------------------------------------------------------------------------- Kinder-Gator

KG_HEADER = ["Timestamp"] + [sdk_column(j) + a for j in KINECT_V1.joints for a in "XYZ"] + [
    "User-ID", "Action", ""]


def write_kg(folder: Path, participant: str, order: int, motion_name: str,
             joints: np.ndarray, action: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"POSE-p{participant}_{order:02d}-{motion_name}-1469182402284.csv"
    rows = [",".join(KG_HEADER)]
    for t, frame in enumerate(joints):
        values = ",".join(f"{v:.6f}" for v in frame.reshape(-1))
        rows.append(f"{1000.0 + t},{values},{participant},{action or motion_name},")
    path.write_text("\n".join(rows) + "\n")
    return path


KG_README = """Demographics
ChildID    Sex      Age     Handedness    Grade       ||       AdultID     Sex      Age    Handedness     EducationCompleted
______________________________________________________________________________________________
337         F       5       B             Pre-K       ||        921         M       26      L             Undergrad
SET#  ORDER
337                   3                ||            921                   1
"""


def test_kindergator_label_from_motion_name_and_attributes(tmp_path):
    (tmp_path / "README.txt").write_text(KG_README)
    j = motion(6, 20)
    write_kg(tmp_path / "Children", "337", 7, "Wave-your-hand", j)
    write_kg(tmp_path / "Adults", "921", 2, "Wave-your-hand", j)  # other order, same motion
    write_kg(tmp_path / "Adults", "921", 7, "Bow", j)
    write_kg(tmp_path / "Adults", "921", 9, "Throw-a-ball-", j)
    dataset = load_kindergator(tmp_path)
    assert dataset.classes == ["Bow", "Throw-a-ball", "Wave-your-hand"]
    by_file = {Path(s.meta["source"]).name.split("-")[1]: s for s in dataset}
    assert by_file["p337_07"].label == by_file["p921_02"].label == 2
    assert by_file["p921_07"].label == 0  # same order number as p337_07, other motion
    assert by_file["p337_07"].attributes == {"sex": "F", "age": 5, "handedness": "B", "group": "child"}
    assert by_file["p921_02"].attributes == {"sex": "M", "age": 26, "handedness": "L", "group": "adult"}
    np.testing.assert_allclose(by_file["p921_02"].joints[:, 0], j, atol=1e-6)


def test_kindergator_columns_found_by_name(tmp_path):
    j = motion(3, 20)
    path = write_kg(tmp_path / "Adults", "921", 1, "Bow", j)
    lines = [l.split(",") for l in path.read_text().splitlines()]
    swapped = [[r[0], r[4], r[5], r[6], r[1], r[2], r[3]] + r[7:] for r in lines]  # Spine first
    path.write_text("\n".join(",".join(r) for r in swapped) + "\n")
    np.testing.assert_allclose(read_kindergator_file(path).joints[:, 0], j, atol=1e-6)


def test_kindergator_demographics_from_readme(tmp_path):
    (tmp_path / "README.txt").write_text(KG_README)
    people = parse_demographics(tmp_path / "README.txt")
    assert set(people) == {"337", "921"}  # the SET# table is not mistaken for people
    (tmp_path / "empty.txt").write_text("no table here\n")
    with pytest.raises(SkeletonFormatError, match="empty.txt"):
        parse_demographics(tmp_path / "empty.txt")


def test_kindergator_wrong_column_count_names_line(tmp_path):
    path = write_kg(tmp_path / "Adults", "921", 1, "Bow", motion(4, 20))
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 3)[0] + ",Bow,"  # User-ID column lost
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError) as err:
        read_kindergator_file(path)
    assert str(path) in str(err.value) and "line 4" in str(err.value)
    assert "63 columns, header has 64" in str(err.value)


def test_kindergator_bad_number_names_line_and_column(tmp_path):
    path = write_kg(tmp_path / "Adults", "921", 1, "Bow", motion(4, 20))
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[KG_HEADER.index("ElbowLeftY")] = "n/a"
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError, match=r"line 3, field 'ElbowLeftY': not a number: 'n/a'"):
        read_kindergator_file(path)


def test_kindergator_action_column_must_match_file_name(tmp_path):
    path = write_kg(tmp_path / "Adults", "921", 1, "Bow", motion(2, 20), action="Jump")
    with pytest.raises(SkeletonFormatError, match=r"line 2, field 'Action': 'Jump' differs"):
        read_kindergator_file(path)


def test_kindergator_missing_joint_column_names_it(tmp_path):
    path = write_kg(tmp_path / "Adults", "921", 1, "Bow", motion(2, 20))
    path.write_text(path.read_text().replace("HeadZ", "HeadQ", 1))
    with pytest.raises(SkeletonFormatError, match=r"line 1, field 'HeadZ'"):
        read_kindergator_file(path)


# ------------------------------------------------------------------------------------ NTU

def write_ntu(path: Path, frames: list[list[tuple[str, np.ndarray]]]) -> Path:
    """Write a ``.skeleton`` file: per frame a list of (bodyID, joints [25, 3])."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, joints in bodies:
            lines.append(f"{body_id} 0 1 2 1 2 0 0.1 0.2 2")
            lines.append("25")
            for x, y, z in joints:
                lines.append(f"{x:.7g} {y:.7g} {z:.7g} 250.1 200.2 900.3 500.4 0.1 0.2 0.3 0.4 2")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def test_ntu_reads_bodies_and_maps_onto_kinect_v1_by_value(tmp_path):
    j = motion(3, 25)
    actor = [("72057594037931101", j[t]) for t in range(3)]
    extra = ("72057594037931102", j[1] + 100.0)  # a second body seen in one frame only
    path = write_ntu(tmp_path / "S001C002P003R002A013.skeleton",
                     [[actor[0]], [extra, actor[1]], [], ])
    sample = read_ntu_file(path)
    assert sample.joints.shape == (3, 2, 25, 3)
    np.testing.assert_allclose(sample.joints[:2, 0], j[:2], atol=1e-5)  # most-tracked body first
    np.testing.assert_allclose(sample.joints[1, 1], j[1] + 100.0, atol=1e-4)
    assert not sample.joints[0, 1].any() and not sample.joints[2].any()
    assert sample.label == 12
    assert (sample.subject, sample.view, sample.meta["setup"], sample.meta["replication"]) == (
        "3", "2", 1, 2)

    dataset = in_layout(load_ntu(tmp_path), "kinect-v1")
    assert dataset.layout is KINECT_V1 and len(dataset.classes) == 60
    mapped = dataset[0].joints[0, 0]  # frame 0, actor: joint x coordinate = NTU index + 0.5
    expected_ntu = {  # Kinect v1 joint -> 1-based NTU joint, as the data README lists
        "hip_center": 1, "spine": 2, "shoulder_center": 21, "head": 4, "shoulder_left": 5,
        "hand_left": 8, "shoulder_right": 9, "hand_right": 12, "hip_left": 13,
        "foot_left": 16, "hip_right": 17, "foot_right": 20,
    }
    for name, ntu in expected_ntu.items():
        assert mapped[KINECT_V1.index(name), 0] == pytest.approx(ntu - 1 + 0.5), name
    np.testing.assert_allclose(mapped[4:20, 0], np.arange(4, 20) + 0.5)  # 5-20 one to one


def test_ntu_truncated_file_names_line(tmp_path):
    path = write_ntu(tmp_path / "S001C001P001R001A001.skeleton",
                     [[("1", motion(1, 25)[0])], [("1", motion(1, 25)[0])]])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:40]) + "\n")  # second frame cut after 9 joints
    with pytest.raises(SkeletonFormatError) as err:
        read_ntu_file(path)
    assert str(path) in str(err.value) and "file ends early" in str(err.value)
    assert "line 41" in str(err.value)


def test_ntu_bad_values_name_the_line(tmp_path):
    path = write_ntu(tmp_path / "S001C001P001R001A001.skeleton", [[("1", motion(1, 25)[0])]])
    lines = path.read_text().splitlines()
    lines[6] = lines[6].replace("250.1", "x250", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError, match=r"line 7: value 4 is not a number: 'x250'"):
        read_ntu_file(path)
    lines[6] = lines[6].replace("x250", "250.1").rsplit(" ", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError, match="line 7: expected 12 numbers, found 11"):
        read_ntu_file(path)
    lines[3] = "24"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError, match="line 4: joint count is 24"):
        read_ntu_file(path)


def test_ntu_file_without_bodies_is_reported(tmp_path):
    write_ntu(tmp_path / "S001C001P001R001A001.skeleton", [[("1", motion(1, 25)[0])]])
    empty = write_ntu(tmp_path / "S001C001P001R001A002.skeleton", [[], []])
    dataset = load_ntu(tmp_path, on_error="skip")
    assert len(dataset) == 1 and dataset.skipped[0].path == str(empty)
    assert "no body tracked" in dataset.skipped[0].reason


# ------------------------------------------------------------------------------------ npz

def small_dataset() -> SkeletonDataset:
    samples = [
        SkeletonSample(motion(t, 20, seed=t)[:, None], label, {
            "dataset": "mine", "subject": subject, "view": "front", "source": "x",
            "attributes": {"sex": sex, "age": age}})
        for t, label, subject, sex, age in [(4, 0, "a", "F", 30), (7, 1, "b", "M", 8)]
    ]
    return SkeletonDataset("mine", KINECT_V1, ["wave", "bow"], samples)


def test_npz_round_trip(tmp_path):
    original = small_dataset()
    path = write_npz(original, tmp_path / "mine.npz")
    loaded = load_dataset("npz", path)
    assert loaded.layout is KINECT_V1 and loaded.classes == ["wave", "bow"]
    assert [s.joints.shape for s in loaded] == [(4, 1, 20, 3), (7, 1, 20, 3)]
    for a, b in zip(original, loaded):
        np.testing.assert_array_equal(a.joints, b.joints)
        assert (a.label, a.subject, a.view, a.attributes) == (b.label, b.subject, b.view, b.attributes)


def test_npz_minimal_four_dim_file(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, joints=np.ones((3, 5, 25, 3)), labels=np.array([0, 2, 1]),
             subjects=np.array([1, 1, 2]), layout="ntu25")
    dataset = read_npz_file(path)
    assert dataset.layout is NTU25 and dataset.classes == ["0", "1", "2"]
    assert dataset[0].joints.shape == (5, 1, 25, 3) and dataset.subjects == ["1", "2"]
    assert dataset.name == "plain" and dataset[1].view is None


@pytest.mark.parametrize("change, field, message", [
    (lambda a: a.pop("labels"), "labels", "required array is missing"),
    (lambda a: a.update(labels=np.array([0, 5])), "labels", "sample 1 has label 5"),
    (lambda a: a.update(joints=np.ones((2, 4, 1, 19, 3))), "joints", "has 19 joints"),
    (lambda a: a.update(subjects=np.array(["a"])), "subjects", "one per sample"),
    (lambda a: a.update(lengths=np.array([4, 9])), "lengths", "sample 1 has length 9"),
    (lambda a: a.update(layout="kinect-v3"), "layout", "unknown layout"),
    (lambda a: a.update(subjects=np.array([{"a": 1}, None], dtype=object)), "subjects", "pickle"),
])
def test_npz_bad_field_is_named(tmp_path, change, field, message):
    arrays = {"joints": np.ones((2, 4, 1, 20, 3), np.float32), "labels": np.array([0, 1]),
              "subjects": np.array(["a", "b"]), "classes": np.array(["x", "y"]),
              "layout": np.array("kinect-v1")}
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(SkeletonFormatError) as err:
        read_npz_file(path)
    assert str(path) in str(err.value) and f"field {field!r}" in str(err.value)
    assert message in str(err.value)


def test_npz_truncated_archive_is_a_format_error(tmp_path):
    path = write_npz(small_dataset(), tmp_path / "mine.npz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SkeletonFormatError, match="mine.npz"):
        load_npz(path)


def test_npz_folder_joins_files_and_skips_bad_ones(tmp_path):
    write_npz(small_dataset(), tmp_path / "site1.npz")
    write_npz(small_dataset(), tmp_path / "site2.npz")
    (tmp_path / "site3.npz").write_bytes(b"not a zip")
    dataset = load_npz(tmp_path, on_error="skip")
    assert len(dataset) == 4 and [Path(s.path).name for s in dataset.skipped] == ["site3.npz"]
    with pytest.raises(SkeletonFormatError, match="site3.npz"):
        load_npz(tmp_path)


# ------------------------------------------------------------------------- registry, layout

def test_every_registered_loader_imports():
    for name in LOADERS:
        assert callable(loader(name))
    with pytest.raises(ValueError, match="unknown data set 'kinetics'.*nw-ucla"):
        load_dataset("kinetics", "/nowhere")


def test_synthetic_goes_to_the_generator_in_the_requested_layout():
    dataset = load_dataset("synthetic", num_classes=2, num_subjects=2,
                           samples_per_class_subject=1, num_frames=6, layout="ntu25")
    assert dataset.layout is NTU25 and len(dataset) == 4
    assert dataset[0].joints.shape[1:] == (1, 25, 3)


def test_layout_option_maps_msr_onto_kinect_v1_by_name(tmp_path):
    write_msr(tmp_path, "a01_s01_e01", motion(2, 20))
    raw = load_dataset("msr-action3d", tmp_path)
    mapped = load_dataset("msr-action3d", tmp_path, layout="kinect-v1")
    assert raw.layout is MSR_ACTION3D and mapped.layout is KINECT_V1
    for name in KINECT_V1.joints:
        np.testing.assert_array_equal(mapped[0].joints[..., KINECT_V1.index(name), :],
                                      raw[0].joints[..., MSR_ACTION3D.index(name), :])
    with pytest.raises(ValueError, match="missing neck"):
        in_layout(mapped, "ntu25")


def test_dataset_folder_names_what_is_missing(tmp_path):
    (tmp_path / "nw-ucla").mkdir()
    assert dataset_folder(tmp_path, "nw-ucla") == tmp_path / "nw-ucla"
    with pytest.raises(FileNotFoundError) as err:
        dataset_folder(tmp_path, "kinder-gator")
    assert "kinder-gator" in str(err.value) and "present: nw-ucla" in str(err.value)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nw-ucla: no files matching \*\.json"):
        load_nwucla(tmp_path)
