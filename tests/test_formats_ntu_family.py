"""Readers for the formats researchers use for NTU-family data, on small files written here.

pyskl pickles, CTR-GCN ``.npz``, PKU-MMD text files, UESTC skeleton files, and the
published NTU train/test protocols. Damaged files must give a ``ValueError`` naming the
file and the line or field; the pyskl reader must refuse pickles carrying code.
"""

from __future__ import annotations

import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from skeletons.read_common import SkeletonFormatError
from skeletons.read_ctrgcn_npz import load_ctrgcn_npz, read_ctrgcn_npz
from skeletons.read_pkummd import (
    PKU_MMD_PART1_CLASSES,
    load_pkummd,
    read_pkummd_labels,
    read_pkummd_skeleton,
    read_pkummd_split_list,
)
from skeletons.read_pyskl import UnsafePickleError, load_pyskl, safe_load_pickle
from skeletons.read_uestc import load_uestc, read_uestc_file, read_uestc_text
from skeletons.sample import SkeletonDataset
from skeletons.standard_splits import split_dataset, standard_split

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- pyskl

def _annotation(frame_dir: str, label: int, persons: int, frames: int) -> dict:
    keypoint = RNG.normal(size=(persons, frames, 25, 3)).astype(np.float32)
    return {"frame_dir": frame_dir, "label": label, "total_frames": frames,
            "keypoint": keypoint, "img_shape": (1080, 1920)}


def _pyskl_doc() -> dict:
    annotations = [
        _annotation("S001C001P001R001A001", 0, 1, 4),
        _annotation("S001C002P003R001A002", 1, 2, 3),
        _annotation("S002C003P002R002A010", 9, 1, 5),
    ]
    return {
        "split": {
            "xsub_train": ["S001C001P001R001A001", "S002C003P002R002A010"],
            "xsub_val": ["S001C002P003R001A002"],
            "xview_train": ["S001C002P003R001A002", "S002C003P002R002A010"],
            "xview_val": ["S001C001P001R001A001"],
        },
        "annotations": annotations,
    }


def _dump(path: Path, obj: object, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pyskl_reads_samples_labels_meta_and_splits(tmp_path: Path, protocol: int) -> None:
    doc = _pyskl_doc()
    path = _dump(tmp_path / "ntu60_3danno.pkl", doc, protocol)
    ds = load_pyskl(path)
    assert (ds.name, ds.num_classes, ds.layout.name) == ("ntu", 60, "ntu25")
    assert ds.classes[0] == "A001" and len(ds) == 3
    by_dir = {s.meta["frame_dir"]: s for s in ds}
    for ann in doc["annotations"]:
        sample = by_dir[ann["frame_dir"]]
        assert sample.joints.dtype == np.float32
        np.testing.assert_array_equal(sample.joints, ann["keypoint"].transpose(1, 0, 2, 3))
        assert sample.label == ann["label"]
    two = by_dir["S001C002P003R001A002"]
    assert two.joints.shape == (3, 2, 25, 3)
    assert (two.subject, two.view, two.meta["setup"], two.meta["replication"]) == ("3", "2", 1, 1)
    assert two.meta["split"] == ["xsub_val", "xview_train"]
    assert (two.meta["split_xsub"], two.meta["split_xview"]) == ("test", "train")
    assert two.meta["dataset"] == "ntu" and two.meta["source"] == str(path)
    assert standard_split("ntu60", "xsub", two.meta) == two.meta["split_xsub"]


def test_pyskl_infers_ntu120_and_loads_legacy_split_files(tmp_path: Path) -> None:
    train = [_annotation("S018C001P045R001A061", 60, 1, 2),
             _annotation("S001C001P001R001A001", 0, 1, 2)]
    val = [_annotation("S019C002P044R002A120", 119, 2, 3)]
    _dump(tmp_path / "ntu120_xsub_train.pkl", train)
    _dump(tmp_path / "ntu120_xsub_val.pkl", val)
    ds = load_pyskl(tmp_path)
    assert ds.num_classes == 120 and len(ds) == 3
    splits = {s.meta["frame_dir"]: s.meta["split_xsub"] for s in ds}
    assert splits == {"S018C001P045R001A061": "train", "S001C001P001R001A001": "train",
                      "S019C002P044R002A120": "test"}
    for s in ds:  # the files' split agrees with the published subject list
        assert standard_split("ntu120", "xsub", {"subject": s.subject}) == s.meta["split_xsub"]


def test_pyskl_custom_dataset_needs_labels_in_range_only(tmp_path: Path) -> None:
    doc = {"split": {},
           "annotations": [_annotation("clip_a", 2, 1, 3), _annotation("clip_b", 0, 1, 2)]}
    ds = load_pyskl(_dump(tmp_path / "mine.pkl", doc), classes=["x", "y", "z"])
    assert ds.name == "mine" and ds.classes == ["x", "y", "z"]
    assert sorted(ds.labels.tolist()) == [0, 2] and all(s.subject == "unknown" for s in ds)


@pytest.mark.parametrize("payload, refused", [
    (b"cos\nsystem\n(S'touch MARKER'\ntR.", "os.system"),
    (b"cbuiltins\neval\n(S'open(\"MARKER\", \"w\")'\ntR.", "builtins.eval"),
    (b"csubprocess\ncheck_call\n((S'touch'\nS'MARKER'\nltR.", "subprocess.check_call"),
])
def test_pyskl_refuses_pickled_code_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, refused: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as err:
        load_pyskl(path)
    assert isinstance(err.value, ValueError)
    assert refused in str(err.value) and str(path) in str(err.value)
    assert err.value.global_name == refused
    assert not (tmp_path / "MARKER").exists()


def test_pyskl_refuses_code_hidden_inside_a_valid_document(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (subprocess.check_call, (["touch", str(tmp_path / "MARKER")],))

    doc = _pyskl_doc()
    doc["annotations"][1]["extra"] = Exploit()
    path = _dump(tmp_path / "ntu60_3danno.pkl", doc, protocol=4)
    with pytest.raises(UnsafePickleError, match="subprocess.check_call"):
        safe_load_pickle(path)
    assert not (tmp_path / "MARKER").exists()


def test_pyskl_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    full = pickle.dumps(_pyskl_doc(), protocol=2)
    path = tmp_path / "cut.pkl"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(SkeletonFormatError, match="cut.pkl.*(truncated|not a readable)"):
        load_pyskl(path)


@pytest.mark.parametrize("damage, field, message", [
    (lambda a: a.update(keypoint=np.zeros((1, 3, 17, 2), np.float32)), "keypoint", "C=2"),
    (lambda a: a.update(keypoint=np.zeros((3, 25, 3), np.float32)), "keypoint", r"\[M, T, V, C\]"),
    (lambda a: a.update(total_frames=9), "total_frames", "9 but keypoint has 3"),
    (lambda a: a.update(label=5), "label", "A002"),
    (lambda a: a.pop("frame_dir"), "frame_dir", "missing"),
])
def test_pyskl_damaged_annotation_names_the_field(
    tmp_path: Path, damage, field: str, message: str
) -> None:
    doc = _pyskl_doc()
    doc["split"] = {}
    damage(doc["annotations"][1])
    path = _dump(tmp_path / "bad.pkl", doc)
    with pytest.raises(SkeletonFormatError) as err:
        load_pyskl(path)
    text = str(err.value)
    assert str(path) in text and field in text
    assert re.search(message, text)


def test_pyskl_skip_keeps_good_annotations_and_records_the_bad(tmp_path: Path) -> None:
    doc = _pyskl_doc()
    doc["annotations"][0]["keypoint"] = np.full((1, 4, 25, 3), np.inf, np.float32)
    ds = load_pyskl(_dump(tmp_path / "some_bad.pkl", doc), on_error="skip")
    assert len(ds) == 2 and len(ds.skipped) == 1
    assert "annotations[0]" in ds.skipped[0].path and "infinite" in ds.skipped[0].reason


def test_pyskl_split_naming_an_unknown_sample_is_an_error(tmp_path: Path) -> None:
    doc = _pyskl_doc()
    doc["split"]["xsub_val"].append("S001C001P009R001A003")
    with pytest.raises(SkeletonFormatError, match=r"split\['xsub_val'\].*S001C001P009R001A003"):
        load_pyskl(_dump(tmp_path / "ntu.pkl", doc))


# --------------------------------------------------------------------------- CTR-GCN npz

def _padded(lengths: list[int], persons: list[int], t: int = 12) -> np.ndarray:
    x = np.zeros((len(lengths), t, 2 * 25 * 3), np.float32)
    for i, (n, m) in enumerate(zip(lengths, persons)):
        x[i, :n, : m * 75] = RNG.normal(size=(n, m * 75))
    return x


def _one_hot(labels: list[int], k: int = 60) -> np.ndarray:
    y = np.zeros((len(labels), k), np.float32)
    y[np.arange(len(labels)), labels] = 1
    return y


def _write_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_ctrgcn_npz_strips_padding_and_marks_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    monkeypatch.setattr("skeletons.read_ctrgcn_npz._CHUNK_ROWS", 2)  # rows cross chunk edges
    x_train, x_test = _padded([4, 12, 7], [1, 2, 1]), _padded([5, 1], [2, 1])
    path = _write_npz(tmp_path / "NTU60_CS.npz", compressed, x_train=x_train,
                      y_train=_one_hot([0, 5, 59]), x_test=x_test, y_test=_one_hot([3, 3]))
    ds = read_ctrgcn_npz(path)
    assert (ds.name, ds.num_classes, len(ds)) == ("ntu", 60, 5)
    assert [s.joints.shape[0] for s in ds] == [4, 12, 7, 5, 1]
    assert all(s.joints.shape[1:] == (2, 25, 3) and s.joints.dtype == np.float32 for s in ds)
    np.testing.assert_array_equal(ds[2].joints, x_train[2, :7].reshape(7, 2, 25, 3))
    assert not ds[0].joints[:, 1].any()  # the absent second person stays zero
    assert ds.labels.tolist() == [0, 5, 59, 3, 3]
    assert [s.meta["split"] for s in ds] == ["train"] * 3 + ["test"] * 2
    assert [s.meta["split_xsub"] for s in ds] == ["train"] * 3 + ["test"] * 2
    assert all(s.subject == "unknown" and s.view is None for s in ds)
    assert standard_split("ntu", "xsub", ds[4].meta) == "test"


def test_ctrgcn_npz_names_fill_subject_camera_and_setup(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "data.npz", x_train=_padded([3, 2], [1, 1]),
                      y_train=np.array([0, 1]), x_test=_padded([2], [1]), y_test=np.array([2]))
    names_file = tmp_path / "test_names.txt"
    names_file.write_text("S003C001P007R002A003\n")
    ds = read_ctrgcn_npz(path, dataset="ntu120", protocol="CSub", names={
        "train": ["S001C002P001R001A001", "S002C003P003R001A002"], "test": names_file})
    assert ds.num_classes == 120
    assert [(s.subject, s.view, s.meta["setup"]) for s in ds] == [
        ("1", "2", 1), ("3", "3", 2), ("7", "1", 3)]
    assert [standard_split("ntu120", "xsub", s.meta) for s in ds] == ["train", "test", "test"]
    assert ds[0].meta["split_xsub"] == "train"


def test_ctrgcn_npz_names_that_disagree_with_labels_are_refused(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "NTU60_CV.npz", x_train=_padded([3], [1]), y_train=_one_hot([4]))
    with pytest.raises(SkeletonFormatError, match=r"names\['train'\]\[0\].*A001"):
        read_ctrgcn_npz(path, names={"train": ["S001C001P001R001A001"]})


def test_ctrgcn_npz_damage_is_named(tmp_path: Path) -> None:
    good = _write_npz(tmp_path / "NTU60_CS.npz", x_train=_padded([3, 4], [1, 1]),
                      y_train=_one_hot([1, 2]))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-700])
    with pytest.raises(SkeletonFormatError, match="cut.npz"):
        read_ctrgcn_npz(cut)

    empty = _write_npz(tmp_path / "empty.npz", x_train=_padded([3, 0], [1, 1]),
                       y_train=_one_hot([1, 2]))
    with pytest.raises(SkeletonFormatError, match=r"empty.npz.*x_train\[1\].*zero"):
        read_ctrgcn_npz(empty)
    skipped = read_ctrgcn_npz(empty, on_error="skip")
    assert len(skipped) == 1 and skipped.skipped[0].path.endswith("#x_train[1]")

    y = _one_hot([1, 2])
    y[0, 7] = 1
    two_hot = _write_npz(tmp_path / "twohot.npz", x_train=_padded([3, 4], [1, 1]), y_train=y)
    with pytest.raises(SkeletonFormatError, match=r"y_train\[0\].*one-hot"):
        read_ctrgcn_npz(two_hot)

    odd = _write_npz(tmp_path / "odd.npz", x_train=np.ones((2, 5, 149), np.float32),
                     y_train=_one_hot([1, 2]))
    with pytest.raises(SkeletonFormatError, match=r"odd.npz.*x_train.*149"):
        read_ctrgcn_npz(odd)

    short = _write_npz(tmp_path / "short.npz", x_train=_padded([3, 4], [1, 1]),
                       y_train=_one_hot([1]))
    with pytest.raises(SkeletonFormatError, match=r"short.npz.*y_train"):
        read_ctrgcn_npz(short)


def test_ctrgcn_folder_with_several_files_asks_which(tmp_path: Path) -> None:
    for name in ("NTU60_CS.npz", "NTU60_CV.npz"):
        _write_npz(tmp_path / name, x_train=_padded([3], [1]), y_train=_one_hot([1]))
    with pytest.raises(FileNotFoundError, match="file="):
        load_ctrgcn_npz(tmp_path)
    ds = load_ctrgcn_npz(tmp_path, file="NTU60_CV.npz")
    assert ds[0].meta["split_xview"] == "train"


# --------------------------------------------------------------------------- PKU-MMD

def _pku_tree(root: Path, recordings: dict[str, tuple[np.ndarray, str]]) -> None:
    (root / "PKU_Skeleton_Renew").mkdir(parents=True)
    (root / "Train_Label_PKU_final").mkdir()
    for name, (frames, labels) in recordings.items():
        lines = [" " + " ".join(f"{v:.6f}" for v in row) for row in frames.reshape(len(frames), -1)]
        (root / "PKU_Skeleton_Renew" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        (root / "Train_Label_PKU_final" / f"{name}.txt").write_text(labels)


def _frames(t: int) -> np.ndarray:
    frames = np.round(RNG.normal(size=(t, 2, 25, 3)), 6).astype(np.float32)
    frames[:, 1] = 0  # one person: the second body is zeros
    return frames


def test_pkummd_cuts_trimmed_samples_with_views_subjects_and_splits(tmp_path: Path) -> None:
    a, b, c = _frames(20), _frames(12), _frames(9)
    _pku_tree(tmp_path, {"0002-L": (a, "3,2,8,1\n51,10,20,2\n"), "0002-M": (b, "17,0,12,1\n"),
                         "0003-R": (c, "8, 1, 9, 2\n")})
    (tmp_path / "Split").mkdir()
    (tmp_path / "Split" / "cross-subject.txt").write_text(
        "Training videos: \n0002-L, 0002-M, 0002-R\nValidataion videos: \n0003-L, 0003-M, 0003-R\n")
    (tmp_path / "Split" / "cross-view.txt").write_text(
        "Training videos: \n0002-M, 0003-R\nValidataion videos: \n0002-L\n")
    ds = load_pkummd(tmp_path)
    assert (ds.name, ds.num_classes, len(ds)) == ("pku-mmd", 51, 4)
    first, second, third, fourth = ds.samples
    np.testing.assert_allclose(first.joints, a[2:8], atol=1e-6)
    np.testing.assert_allclose(second.joints, a[10:20], atol=1e-6)
    assert first.joints.shape == (6, 2, 25, 3) and first.joints.dtype == np.float32
    assert [s.label for s in ds] == [2, 50, 16, 7]
    assert ds.classes[50] == PKU_MMD_PART1_CLASSES[50] == "writing"
    assert (first.view, first.subject, first.meta["subject_is_proxy"]) == ("L", "0002", True)
    assert (first.meta["confidence"], second.meta["confidence"]) == (1, 2)
    assert [s.meta["split_xsub"] for s in ds] == ["train", "train", "train", "test"]
    assert [s.meta["split_xview"] for s in ds] == ["test", "test", "train", "train"]
    assert standard_split("pku-mmd", "xsub", fourth.meta) == "test"
    assert third.meta["recording"] == "0002-M" and fourth.subject == "0003"


def test_pkummd_part2_reads_subjects_from_names_and_checks_class_range(tmp_path: Path) -> None:
    frames = _frames(10)
    _pku_tree(tmp_path, {"A01N08-L": (frames, "41,0,10,1\n")})
    ds = load_pkummd(tmp_path, part=2)
    assert (ds.num_classes, ds[0].label, ds[0].subject) == (41, 40, "8")
    assert ds[0].meta["subject_is_proxy"] is False
    (tmp_path / "Train_Label_PKU_final" / "A01N08-L.txt").write_text("41,0,10,1\n42,2,5,1\n")
    with pytest.raises(SkeletonFormatError, match=r"A01N08-L.txt, line 2.*42.*1..41"):
        load_pkummd(tmp_path, part=2)
    assert len(load_pkummd(tmp_path, part=2, classes=PKU_MMD_PART1_CLASSES)) == 2


def test_pkummd_subject_map_replaces_the_proxy(tmp_path: Path) -> None:
    _pku_tree(tmp_path, {"0005-R": (_frames(6), "1,0,6,1\n")})
    mapping = tmp_path / "subjects.csv"
    mapping.write_text("# video,subject\n0005,17\n")
    ds = load_pkummd(tmp_path, subjects=mapping)
    assert (ds[0].subject, ds[0].meta["subject_is_proxy"]) == ("17", False)


def test_pkummd_damage_names_file_and_line(tmp_path: Path) -> None:
    skel = tmp_path / "0001-L.txt"
    skel.write_text(" ".join(["0.1"] * 150) + "\n" + " ".join(["0.1"] * 149) + "\n")
    with pytest.raises(SkeletonFormatError, match=r"0001-L.txt, line 2.*150"):
        read_pkummd_skeleton(skel)
    skel.write_text(" ".join(["0.1"] * 150) + "\n" + " ".join(["0.1"] * 149 + ["abc"]) + "\n")
    with pytest.raises(SkeletonFormatError, match=r"line 2.*'abc'"):
        read_pkummd_skeleton(skel)

    labels = tmp_path / "labels.txt"
    labels.write_text("3,2,8,1\n3,x,8,1\n")
    with pytest.raises(SkeletonFormatError, match=r"labels.txt, line 2.*non-integer"):
        read_pkummd_labels(labels)
    labels.write_text("3,9,8,1\n")
    with pytest.raises(SkeletonFormatError, match=r"line 1.*empty"):
        read_pkummd_labels(labels)

    split = tmp_path / "cross-view.txt"
    split.write_text("0002-L, 0002-M\nTraining videos:\n0003-L\n")
    with pytest.raises(SkeletonFormatError, match=r"cross-view.txt, line 1.*before any"):
        read_pkummd_split_list(split)
    split.write_text("Training videos:\n0003-L, 0003-X\n")
    with pytest.raises(SkeletonFormatError, match=r"line 2.*0003-X"):
        read_pkummd_split_list(split)


def test_pkummd_folder_skips_bad_recordings_and_says_why(tmp_path: Path) -> None:
    _pku_tree(tmp_path, {"0002-L": (_frames(10), "3,2,8,1\n"), "0004-L": (_frames(5), "3,2,8,1\n"),
                         "0006-M": (_frames(6), "2,0,6,1\n")})
    (tmp_path / "Train_Label_PKU_final" / "0006-M.txt").unlink()
    with pytest.raises(SkeletonFormatError, match=r"0004-L.txt, line 1.*past the 5 frames"):
        load_pkummd(tmp_path)
    ds = load_pkummd(tmp_path, on_error="skip")
    assert [s.meta["recording"] for s in ds] == ["0002-L"]
    reasons = " ".join(s.reason for s in ds.skipped)
    assert len(ds.skipped) == 2 and "past the 5 frames" in reasons and "no label file" in reasons


# --------------------------------------------------------------------------- UESTC

def _uestc_raw(frames: np.ndarray) -> str:
    out = []
    for frame in frames:
        out.append("#")
        for x, y, z in frame:
            out += [f"{x:.6f} {y:.6f} {z:.6f} 0", "512.5 300.25 1", "256 212 2"]
    return "\n".join(out) + "\n"


def test_uestc_reads_the_documented_raw_format(tmp_path: Path) -> None:
    frames = np.round(RNG.normal(size=(3, 25, 3)), 6).astype(np.float32)
    (tmp_path / "skeleton").mkdir()
    front = tmp_path / "skeleton" / "a0_d1_p001_c1_skeleton.txt"
    front.write_text(_uestc_raw(frames))
    side = tmp_path / "skeleton" / "a39_d8_p118_c2_skeleton.txt"
    side.write_text(_uestc_raw(frames[:2]))
    ds = load_uestc(tmp_path)
    assert (ds.name, ds.num_classes, ds.layout.name, len(ds)) == ("uestc", 40, "ntu25", 2)
    one = next(s for s in ds if s.meta["source"] == str(front))
    np.testing.assert_allclose(one.joints[:, 0], frames, atol=1e-6)
    assert one.joints.shape == (3, 1, 25, 3) and one.joints.dtype == np.float32
    assert (one.label, one.subject, one.view, one.meta["direction"]) == (0, "1", "front", 1)
    two = next(s for s in ds if s.meta["source"] == str(side))
    assert (two.label, two.subject, two.view, two.meta["camera"]) == (39, "118", "d8", 2)


def test_uestc_accepts_the_simpler_exports(tmp_path: Path) -> None:
    frames = np.round(RNG.normal(size=(2, 25, 3)), 5)
    per_line = tmp_path / "a1_d2_p003_c2.txt"
    per_line.write_text("\n".join(" ".join(map(str, f.ravel())) for f in frames) + "\n")
    per_joint = tmp_path / "a1_d2_p004_c2.txt"
    per_joint.write_text("\n".join(f"{x}\t{y}\t{z}\t2" for f in frames for x, y, z in f) + "\n")
    framed = tmp_path / "a1_d2_p005_c2.txt"
    framed.write_text("".join("#\n" + "".join(f"{x},{y},{z}\n" for x, y, z in f) for f in frames))
    for path in (per_line, per_joint, framed):
        np.testing.assert_allclose(read_uestc_text(path)[:, 0], frames, atol=1e-5)


def test_uestc_empty_frame_becomes_nan(tmp_path: Path) -> None:
    frames = np.ones((2, 25, 3))
    path = tmp_path / "a2_d3_p002_c1_skeleton.txt"
    path.write_text(_uestc_raw(frames[:1]) + "#\n" + _uestc_raw(frames[1:]))
    sample = read_uestc_file(path)
    assert sample.joints.shape[0] == 3 and np.isnan(sample.joints[1]).all()
    assert sample.meta["empty_frames"] == 1 and not np.isnan(sample.joints[[0, 2]]).any()


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:40], r"line 1\b.*frame has 39 joint lines"),
    (lambda lines: lines[:2] + ["512.5 300.25 7"] + lines[3:], r"line 3\b.*tag 1"),
    (lambda lines: lines[:4] + ["0.1 nope 0.3 0"] + lines[5:], r"line 5\b.*'nope'"),
    (lambda lines: lines[:4] + ["0.1 inf 0.3 0"] + lines[5:], r"line 5\b.*infinite"),
    (lambda lines: ["hello"] + lines, r"line 1\b.*before the first '#'"),
])
def test_uestc_damage_names_file_and_line(tmp_path: Path, damage, message: str) -> None:
    lines = _uestc_raw(np.zeros((2, 25, 3))).splitlines()
    path = tmp_path / "a5_d1_p010_c2_skeleton.txt"
    path.write_text("\n".join(damage(lines)) + "\n")
    with pytest.raises(SkeletonFormatError, match=r"a5_d1_p010_c2_skeleton.txt, " + message):
        read_uestc_file(path)


def test_uestc_bad_name_and_skip_and_front_copies(tmp_path: Path) -> None:
    good = _uestc_raw(np.zeros((1, 25, 3)))
    (tmp_path / "a3_d1_p001_c1_skeleton.txt").write_text(good)
    (tmp_path / "a3_d7_p001_c1_skeleton.txt").write_text(good)
    (tmp_path / "a3_d7_p001_c2_skeleton.txt").write_text(good)
    (tmp_path / "a40_d1_p001_c1_skeleton.txt").write_text(good)
    with pytest.raises(SkeletonFormatError,
                       match=r"a40_d1_p001_c1_skeleton.txt.*file name.*a0-a39"):
        load_uestc(tmp_path)
    ds = load_uestc(tmp_path, on_error="skip")
    assert len(ds) == 3
    assert [Path(s.path).name for s in ds.skipped] == ["a40_d1_p001_c1_skeleton.txt"]
    assert sum(s.meta["front_copy"] for s in ds) == 1
    dropped = load_uestc(tmp_path, on_error="skip", front_copies="drop")
    assert sorted(s.view for s in dropped) == ["d7", "front"]


def test_uestc_mat_file(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    skel = RNG.normal(size=(4, 25, 3)).astype(np.float32)
    path = tmp_path / "a7_d2_p020_c2_skeleton.mat"
    scipy_io.savemat(str(path), {"skel": skel})
    sample = read_uestc_file(path)
    np.testing.assert_array_equal(sample.joints[:, 0], skel)
    scipy_io.savemat(str(path), {"skel": skel[:, :20]})
    with pytest.raises(SkeletonFormatError,
                       match=r"a7_d2_p020_c2_skeleton.mat.*'skel'.*\[T>0, 25, 3\]"):
        read_uestc_file(path)


# --------------------------------------------------------------------------- standard splits

@pytest.mark.parametrize("dataset, protocol, meta, expected", [
    ("ntu60", "xsub", {"subject": "1"}, "train"),
    ("ntu60", "xsub", {"subject": "38"}, "train"),
    ("ntu60", "xsub", {"subject": "3"}, "test"),
    ("ntu60", "xsub", {"subject": "40"}, "test"),
    ("ntu60", "xview", {"view": "1"}, "test"),
    ("ntu60", "xview", {"camera": 2}, "train"),
    ("ntu60", "cross-view", {"view": "3"}, "train"),
    ("ntu120", "xsub", {"subject": "45"}, "train"),
    ("ntu120", "xsub", {"subject": "103"}, "train"),
    ("ntu120", "xsub", {"subject": "44"}, "test"),
    ("ntu120", "xsub", {"subject": "106"}, "test"),
    ("ntu120", "xset", {"setup": 32}, "train"),
    ("ntu120", "xset", {"setup": 17}, "test"),
    ("ntu120", "CSet", {"source": "/d/S002C001P003R001A001.skeleton"}, "train"),
    ("ntu", "xsub", {"frame_dir": "S001C001P002R001A001"}, "train"),
    ("ntu", "xsub", {"subject": "unknown", "split_xsub": "test"}, "test"),
    ("pku-mmd", "xview", {"split_xview": "train"}, "train"),
])
def test_standard_split_known_assignments(dataset, protocol, meta, expected) -> None:
    assert standard_split(dataset, protocol, meta) == expected


def test_standard_split_refuses_what_it_cannot_decide() -> None:
    with pytest.raises(ValueError, match="xset.*not defined.*ntu60"):
        standard_split("ntu60", "xset", {"setup": 2})
    with pytest.raises(ValueError, match="'subject'"):
        standard_split("ntu60", "xsub", {"subject": "unknown", "source": "x.npz"})
    with pytest.raises(ValueError, match="uestc.*split_xsub"):
        standard_split("uestc", "xsub", {"subject": "3"})


def test_split_dataset_partitions_every_sample(tmp_path: Path) -> None:
    doc = _pyskl_doc()
    ds = load_pyskl(_dump(tmp_path / "ntu60_3danno.pkl", doc))
    train, test = split_dataset(ds, "xview")
    assert len(train) + len(test) == len(ds)
    assert {s.view for s in train} <= {"2", "3"} and {s.view for s in test} == {"1"}
    assert isinstance(train, SkeletonDataset) and train.classes == ds.classes


# --------------------------------------------------------------------------- registry

def test_formats_load_through_load_dataset_and_map_to_kinect_v1(tmp_path: Path) -> None:
    from skeletons.datasets import load_dataset

    _dump(tmp_path / "ntu60_3danno.pkl", _pyskl_doc())
    _write_npz(tmp_path / "NTU60_CS.npz", x_train=_padded([3], [1]), y_train=_one_hot([1]))
    _pku_tree(tmp_path / "pku", {"0002-L": (_frames(6), "3,0,6,1\n")})
    (tmp_path / "uestc").mkdir()
    (tmp_path / "uestc" / "a1_d1_p001_c1_skeleton.txt").write_text(_uestc_raw(np.ones((2, 25, 3))))
    loaded = {
        "pyskl": load_dataset("pyskl", tmp_path / "ntu60_3danno.pkl"),
        "ctrgcn-npz": load_dataset("ctrgcn-npz", tmp_path / "NTU60_CS.npz"),
        "pku-mmd": load_dataset("pku-mmd", tmp_path / "pku"),
        "uestc": load_dataset("uestc", tmp_path / "uestc", layout="kinect-v1"),
    }
    assert [len(d) for d in loaded.values()] == [3, 1, 1, 1]
    assert loaded["uestc"].layout.name == "kinect-v1"
    assert loaded["uestc"][0].joints.shape == (2, 1, 20, 3)
    assert all(d.layout.name == "ntu25" for n, d in loaded.items() if n != "uestc")
