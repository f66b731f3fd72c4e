"""The synthetic generator: deterministic, any layout, learnable actions and identities, domain shifts."""

from __future__ import annotations

import numpy as np
import pytest

from skeletons.layouts import KINECT_V1, LAYOUTS, MSR_ACTION3D, map_layout
from skeletons.synthetic import DomainShift, generate_synthetic
from skeletons.synthetic_actions import CATALOGUE, MAX_CLASSES

SMALL = dict(num_classes=8, num_subjects=4, samples_per_class_subject=2)


def _key(sample):
    return sample.subject, sample.label, sample.meta["repetition"], sample.view


def _by_key(dataset):
    return {_key(s): s for s in dataset}


def _resampled(dataset, frames: int = 32) -> np.ndarray:
    """Flattened sequences at a fixed length, relative to the centre joint of the first frame."""
    rows = []
    for s in dataset:
        j = s.joints[:, 0].astype(np.float64)
        pos = np.linspace(0, len(j) - 1, frames)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, len(j) - 1)
        w = (pos - lo)[:, None, None]
        r = j[lo] * (1 - w) + j[hi] * w
        rows.append((r - r[0, dataset.layout.center]).ravel())
    return np.array(rows)


def _nearest_centroid(x_train, y_train, x_test, y_test) -> float:
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])
    dist = ((x_test[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((classes[dist.argmin(axis=1)] == y_test).mean())


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Best rotation R with ``b - mean(b) ~ (a - mean(a)) @ R`` (Kabsch)."""
    a = a.reshape(-1, 3) - a.reshape(-1, 3).mean(axis=0)
    b = b.reshape(-1, 3) - b.reshape(-1, 3).mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_same_seed_same_data_other_seed_differs():
    a, b = generate_synthetic(seed=3, **SMALL), generate_synthetic(seed=3, **SMALL)
    c = generate_synthetic(seed=4, **SMALL)
    assert len(a) == len(b) == len(c)
    assert all(np.array_equal(x.joints, y.joints) and x.meta == y.meta for x, y in zip(a, b))
    assert not all(np.allclose(x.joints, z.joints) for x, z in zip(a, c))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_shapes_labels_and_metadata_in_every_layout(layout):
    ds = generate_synthetic(num_classes=5, num_subjects=3, samples_per_class_subject=2, num_frames=40, layout=layout)
    lay = LAYOUTS[layout]
    assert ds.layout is lay and ds.num_classes == 5 and len(set(ds.classes)) == 5
    assert len(ds) == 5 * 3 * 2
    assert ds.subjects == ["s01", "s02", "s03"]
    assert sorted(set(ds.labels.tolist())) == [0, 1, 2, 3, 4]
    for s in ds:
        assert s.joints.shape == (40, 1, lay.num_joints, 3) and s.joints.dtype == np.float32
        assert np.isfinite(s.joints).all()
        assert s.meta["dataset"] == "synthetic" and s.view is None and s.meta["source"]
        assert set(s.attributes) >= {"sex", "age", "group"}


def test_layouts_carry_the_same_motion():
    v1 = _by_key(generate_synthetic(layout="kinect-v1", **SMALL))
    msr = _by_key(generate_synthetic(layout="msr-action3d", **SMALL))
    for key, s in v1.items():
        np.testing.assert_allclose(map_layout(msr[key].joints, MSR_ACTION3D, KINECT_V1), s.joints, atol=1e-6)


def test_subjects_have_attributes_and_children_are_smaller():
    ds = generate_synthetic(num_classes=2, num_subjects=8, samples_per_class_subject=1)
    head, foot = KINECT_V1.index("head"), KINECT_V1.index("foot_left")
    heights = {"child": [], "adult": []}
    for s in ds:
        attrs = s.attributes
        assert attrs["sex"] in {"F", "M"} and attrs["group"] in {"child", "adult"}
        assert (attrs["age"] < 12) == (attrs["group"] == "child")
        heights[attrs["group"]].append(float(s.joints[0, 0, head, 1] - s.joints[0, 0, foot, 1]))
    groups = {s.attributes["group"] for s in ds}
    assert groups == {"child", "adult"}
    assert {s.attributes["sex"] for s in ds} == {"F", "M"}
    assert max(heights["child"]) < min(heights["adult"])


def test_actions_are_learnable_across_subjects_but_not_trivial():
    ds = generate_synthetic(num_classes=8, num_subjects=6, samples_per_class_subject=3, seed=1)
    x, y = _resampled(ds), ds.labels
    train = np.isin([s.subject for s in ds], ds.subjects[:4])
    acc = _nearest_centroid(x[train], y[train], x[~train], y[~train])
    assert acc > 0.5  # chance is 1/8
    # Not trivial: samples lie about as far from their class mean as class means from each other.
    centroids = np.stack([x[y == c].mean(axis=0) for c in range(ds.num_classes)])
    within = np.linalg.norm(x - centroids[y], axis=1).mean()
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]])
    assert within / between > 0.5


def test_subject_identity_is_recoverable():
    ds = generate_synthetic(num_classes=6, num_subjects=6, samples_per_class_subject=3, seed=2)
    x = _resampled(ds)
    ids = np.array([ds.subjects.index(s.subject) for s in ds])
    rep = np.array([s.meta["repetition"] for s in ds])
    acc = _nearest_centroid(x[rep < 2], ids[rep < 2], x[rep == 2], ids[rep == 2])
    assert acc > 0.5  # chance is 1/6


def test_camera_yaw_and_pitch_rotate_the_recording_by_that_angle():
    base = _by_key(generate_synthetic(**SMALL))
    for yaw, pitch, axis in ((30.0, 0.0, 1), (0.0, 20.0, 0)):
        shifted = generate_synthetic(domain=DomainShift(yaw=yaw, pitch=pitch, name="cam"), **SMALL)
        for s in list(shifted)[:5]:
            ref = base[(s.subject, s.label, s.meta["repetition"], None)]
            r = _rotation_between(ref.joints, s.joints)
            assert _angle_deg(r) == pytest.approx(yaw + pitch, abs=0.1)
            w, v = np.linalg.eig(r)
            rot_axis = np.real(v[:, np.argmin(np.abs(w - 1))])
            assert abs(rot_axis[axis]) == pytest.approx(1.0, abs=1e-3)
            assert s.view == "cam"


def test_noise_frame_rate_and_missing_joints():
    base = _by_key(generate_synthetic(**SMALL))
    noisy = generate_synthetic(domain=DomainShift(noise_std=0.02), **SMALL)
    diffs = np.concatenate([(s.joints - base[(*_key(s)[:3], None)].joints).ravel() for s in noisy])
    assert diffs.std() == pytest.approx(0.02, rel=0.05)
    assert abs(diffs.mean()) < 0.002

    slow = generate_synthetic(domain=DomainShift(frame_rate_factor=0.5), **SMALL)
    assert {s.joints.shape[0] for s in slow} == {26}
    fast = generate_synthetic(domain={"frame_rate_factor": 1.5}, **SMALL)
    assert {s.joints.shape[0] for s in fast} == {78}
    s = next(iter(slow))
    np.testing.assert_allclose(s.joints[0], base[(*_key(s)[:3], None)].joints[0], atol=1e-6)
    np.testing.assert_allclose(s.joints[-1], base[(*_key(s)[:3], None)].joints[-1], atol=1e-6)

    lossy = generate_synthetic(domain=DomainShift(missing_joint_rate=0.1), **SMALL)
    zero = np.concatenate([(s.joints == 0).all(axis=-1).ravel() for s in lossy])
    assert zero.mean() == pytest.approx(0.1, abs=0.01)
    clean = np.concatenate([(s.joints == 0).all(axis=-1).ravel() for s in base.values()])
    assert not clean.any()


def test_several_domains_record_the_same_performances():
    domains = [DomainShift(name="front"), DomainShift(yaw=45, noise_std=0.01, name="side")]
    ds = generate_synthetic(domain=domains, **SMALL)
    assert ds.views == ["front", "side"]
    assert len(ds) == 2 * 8 * 4 * 2
    base = _by_key(generate_synthetic(**SMALL))
    for s in ds.where(view="front"):
        np.testing.assert_array_equal(s.joints, base[(*_key(s)[:3], None)].joints)


def test_class_k_is_the_same_motion_for_any_number_of_classes():
    few = _by_key(generate_synthetic(num_classes=3, num_subjects=2, samples_per_class_subject=1))
    many = generate_synthetic(num_classes=60, num_subjects=2, samples_per_class_subject=1)
    assert many.num_classes == 60 and len(set(many.classes)) == 60
    assert many.classes[:3] == [c.name for c in CATALOGUE[:3]]
    for s in many:
        if s.label < 3:
            np.testing.assert_array_equal(s.joints, few[_key(s)].joints)


def test_many_classes_stay_separable():
    ds = generate_synthetic(num_classes=40, num_subjects=3, samples_per_class_subject=2, seed=5)
    x, y = _resampled(ds), ds.labels
    train = np.array([s.subject != "s03" for s in ds])
    assert _nearest_centroid(x[train], y[train], x[~train], y[~train]) > 0.25  # chance is 1/40


def test_subject_offset_gives_other_people_of_the_same_population():
    whole = generate_synthetic(num_classes=1, num_subjects=4, samples_per_class_subject=1)
    tail = generate_synthetic(num_classes=1, num_subjects=2, samples_per_class_subject=1, subject_offset=2)
    head = generate_synthetic(num_classes=1, num_subjects=2, samples_per_class_subject=1)
    assert tail.subjects == ["s03", "s04"] and not set(tail.subjects) & set(head.subjects)
    attrs = {s.subject: s.attributes for s in whole}
    assert all(s.attributes == attrs[s.subject] for s in tail)
    first = {(s.label, s.meta["repetition"]): s.joints for s in head if s.subject == "s01"}
    assert not any(np.allclose(s.joints, first[(s.label, s.meta["repetition"])]) for s in tail)


def test_domain_mapping_accepts_short_field_names():
    ds = generate_synthetic(domain={"name": "slow", "noise": 0.01, "frame_rate": 0.5, "missing": 0.05}, **SMALL)
    assert ds.views == ["slow"] and {s.joints.shape[0] for s in ds} == {26}
    with pytest.raises(ValueError, match="not both"):
        DomainShift.from_value({"noise": 0.01, "noise_std": 0.02})


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes="8"), "num_classes"),
        (dict(subject_offset=-1), "subject_offset"),
        (dict(num_classes=MAX_CLASSES + 1), "num_classes"),
        (dict(num_subjects=0), "num_subjects"),
        (dict(num_frames=2), "num_frames"),
        (dict(layout="kinect-v9"), "kinect-v9"),
        (dict(domain={"yaw": 10, "roll": 3}), "roll"),
        (dict(domain=[DomainShift(name="a"), DomainShift(name="a")]), "distinct"),
        (dict(domain="front"), "domain"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, words):
    with pytest.raises(ValueError, match=words):
        generate_synthetic(**kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("noise_std", -0.1), ("frame_rate_factor", 0.0), ("missing_joint_rate", 1.0), ("pitch", 120.0)],
)
def test_domain_shift_rejects_bad_fields(field, value):
    with pytest.raises(ValueError, match=field):
        DomainShift(**{field: value})
