"""The readers on the real recordings under ../shared/data (skipped when absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import dataset_dir
from skeletons.datasets import dataset_folder, in_layout, load_dataset
from skeletons.layouts import KINECT_V1, MSR_ACTION3D
from skeletons.preprocess import PreprocessConfig, to_arrays

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def ucla(data_root):
    return load_dataset("nw-ucla", dataset_dir(data_root, "nw-ucla"))


@pytest.fixture(scope="module")
def msr(data_root):
    return load_dataset("msr-action3d", dataset_dir(data_root, "msr-action3d"))


@pytest.fixture(scope="module")
def kinder(data_root):
    return load_dataset("kinder-gator", dataset_dir(data_root, "kinder-gator"))


def test_nwucla_counts(ucla):
    assert len(ucla) == 1484 and ucla.num_classes == 10
    assert ucla.subjects == [str(s) for s in sorted(range(1, 11), key=str)]
    assert ucla.views == ["1", "2", "3"] and not ucla.skipped
    assert set(ucla.labels.tolist()) == set(range(10))
    walk = [s for s in ucla if s.meta["action"] == "a04"]
    assert walk and all(ucla.classes[s.label] == "walk around" for s in walk)
    assert all(s.joints.shape[1:] == (1, 20, 3) for s in ucla)
    assert len(ucla.where(view="3")) == sum(1 for s in ucla if s.view == "3") > 400


def test_msr_counts_and_protocol_flag(msr):
    assert len(msr) == 567 and msr.num_classes == 20 and len(msr.subjects) == 10
    # The protocol list names 557 of the 567 files (the data README's "556" is the
    # line count of a file without a final newline).
    assert sum(s.meta["in_cvpr12_protocol"] for s in msr) == 557
    assert msr.layout is MSR_ACTION3D and set(msr.labels.tolist()) == set(range(20))
    empty = next(s for s in msr if s.meta["source"].endswith("a13_s09_e02_skeleton3D.txt"))
    assert empty.meta["zero_frames"] == len(empty.joints)  # kept, not dropped while reading


def test_kindergator_counts_and_attributes(kinder):
    assert len(kinder) == 1159 and kinder.num_classes == 58 and len(kinder.subjects) == 20
    groups = {s.subject: s.attributes["group"] for s in kinder}
    assert Counter(groups.values()) == {"child": 10, "adult": 10}
    people = {s.subject: s.attributes for s in kinder}
    assert people["337"] == {"sex": "F", "age": 5, "handedness": "B", "group": "child"}
    assert people["921"] == {"sex": "M", "age": 26, "handedness": "L", "group": "adult"}
    assert all(set(a) == {"sex", "age", "handedness", "group"} for a in people.values())
    per_motion = Counter(kinder.classes[s.label] for s in kinder)
    assert per_motion["Jump-as-high-as-you-can"] == 19 and per_motion["Bow"] == 20
    # order numbers differ between participants; labels follow the motion name
    swim = [s for s in kinder if s.meta["motion"] == "Swim"]
    assert len({s.meta["order"] for s in swim}) > 1 and len({s.label for s in swim}) == 1


def test_msr_mapped_to_kinect_v1_agrees_with_nwucla_layout(msr):
    mapped = in_layout(msr, "kinect-v1")
    s, m = msr[0], mapped[0]
    assert mapped.layout is KINECT_V1
    for name in ("hip_center", "head", "hand_left", "foot_right"):
        np.testing.assert_array_equal(m.joints[..., KINECT_V1.index(name), :],
                                      s.joints[..., MSR_ACTION3D.index(name), :])
    head, foot = KINECT_V1.index("head"), KINECT_V1.index("foot_left")
    assert (m.joints[0, 0, head, 1] > m.joints[0, 0, foot, 1])  # head above foot: y is up


def test_real_data_preprocesses_to_model_input(ucla, msr):
    cfg = PreprocessConfig(num_frames=32)
    x, y = to_arrays(ucla, cfg)
    assert x.shape == (1484, 3, 32, 20, 1) and np.isfinite(x).all() and len(y) == 1484
    torso = np.linalg.norm(x[:, :, :, 2, 0] - x[:, :, :, 0, 0], axis=1).mean(axis=1)
    np.testing.assert_allclose(torso, 1.0, rtol=1e-4)
    x, _ = to_arrays(msr, cfg)
    zeros = [i for i in range(len(msr)) if not x[i].any()]
    assert [Path(msr[i].meta["source"]).name for i in zeros] == ["a13_s09_e02_skeleton3D.txt"]


def test_dataset_folder_on_real_root(data_root):
    assert dataset_folder(data_root, "nw-ucla").name == "nw-ucla"
    if not (data_root / "ntu").exists():
        with pytest.raises(FileNotFoundError, match="'ntu' not found.*present: .*kinder-gator"):
            dataset_folder(data_root, "ntu")
