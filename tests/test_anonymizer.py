"""Anonymizer and bone normalization: shapes, layouts, exact token counts, canonical bodies,
persistence without pickle, and the site-facing ``anonymize_arrays`` switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privacy.anonymizer import (
    AnonymizationConfig,
    Anonymizer,
    AnonymizerConfig,
    action_prototypes,
    anonymize_arrays,
    fit_anonymizer,
    load_anonymizer,
    model_paths,
    save_anonymizer,
)
from privacy.bone_normalize import (
    BoneNormalizeConfig,
    bone_lengths,
    canonical_bone_lengths,
    normalize_bones,
    valid_frames,
)
from skeletons.layouts import KINECT_V1, MSR_ACTION3D, NTU25, Layout

TINY = AnonymizerConfig(channels=8, blocks=1, epochs=1, batch_size=8, adversary_hidden=8)


def random_people(layout: Layout, n: int = 6, t: int = 18, m: int = 1, seed: int = 0) -> np.ndarray:
    """Skeletons of people with different sizes, standing at different places."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.05, size=(n, 3, t, layout.num_joints, m))
    x += rng.normal(scale=0.3, size=(n, 3, 1, layout.num_joints, m))  # a posture per person
    x *= rng.uniform(0.6, 1.6, size=(n, 1, 1, 1, 1))  # body size
    x += rng.normal(scale=1.0, size=(n, 3, 1, 1, 1))  # place in the room
    return x.astype(np.float32)


@pytest.mark.parametrize("layout", [KINECT_V1, MSR_ACTION3D, NTU25], ids=lambda l: l.name)
def test_anonymizer_keeps_shape_layout_and_absent_persons(layout: Layout) -> None:
    x = random_people(layout, n=4, t=13, m=2)
    x[1, :, :, :, 1] = 0.0  # second person absent in sample 1
    torch.manual_seed(0)
    model = Anonymizer(layout, TINY)
    for keep in (1.0, 0.4):
        out = model.anonymize(x, keep)
        assert out.shape == x.shape and out.dtype == np.float32
        assert np.isfinite(out).all()
        assert np.all(out[1, :, :, :, 1] == 0.0)
        assert np.abs(out[0, :, :, :, 1]).sum() > 0
        lengths = bone_lengths(out, layout)[valid_frames(out)]
        np.testing.assert_allclose(lengths, np.broadcast_to(canonical_bone_lengths(layout, "torso"), lengths.shape),
                                   atol=1e-4)


def test_keep_ratio_sets_the_exact_number_of_surviving_tokens() -> None:
    x = random_people(KINECT_V1, n=5, t=18, m=1)
    model = Anonymizer(KINECT_V1, TINY)  # window 4: ceil(18/4)=5 windows x 20 joints = 100 tokens
    assert model.num_tokens(18) == 100
    counts = {}
    for keep in (1.0, 0.73, 0.5, 0.1, 0.01):
        mask = model.kept_tokens(x, keep)
        assert mask.shape == (5, 1, 5, 20)
        per_person = mask.sum(axis=(2, 3))
        assert np.all(per_person == max(1, round(keep * 100)))
        counts[keep] = int(per_person[0, 0])
    assert counts == {1.0: 100, 0.73: 73, 0.5: 50, 0.1: 10, 0.01: 1}
    with pytest.raises(ValueError, match="keep_ratio"):
        model.kept_tokens(x, 0.0)


def test_dropped_tokens_change_the_output_and_full_keep_is_identity_before_training() -> None:
    x = random_people(KINECT_V1, n=3, t=16)
    model = Anonymizer(KINECT_V1, TINY)
    canonical = model.prepare(x)
    np.testing.assert_allclose(model.anonymize(x, 1.0), canonical, atol=1e-5)
    sparse = model.anonymize(x, 0.3)
    assert np.abs(sparse - canonical).max() > 1e-3


def test_bone_normalization_gives_every_subject_the_canonical_body() -> None:
    from skeletons.preprocess import PreprocessConfig, to_arrays
    from skeletons.synthetic import generate_synthetic

    data = generate_synthetic(num_classes=2, num_subjects=6, samples_per_class_subject=1, num_frames=24, seed=3)
    raw, _ = to_arrays(data, PreprocessConfig(num_frames=24, normalize_scale=False))
    raw_lengths = bone_lengths(raw, data.layout)[:, :, 0].mean(axis=1)  # [N, B]
    assert raw_lengths.std(axis=0).max() > 0.01  # the subjects do differ
    for unit in ("metres", "torso"):
        out = normalize_bones(raw, data.layout, BoneNormalizeConfig(unit=unit))
        lengths = bone_lengths(out, data.layout)[valid_frames(out)]
        expected = canonical_bone_lengths(data.layout, unit)
        np.testing.assert_allclose(lengths, np.broadcast_to(expected, lengths.shape), atol=1e-4)
    # body-aligned frame: the spine points up (+y), the hips along x, root starts at the origin
    out = normalize_bones(raw, data.layout, BoneNormalizeConfig(posture=False))
    spine = out[:, :, :, data.layout.index("shoulder_center"), 0] - out[:, :, :, data.layout.center, 0]
    assert np.all(spine.mean(axis=2)[:, 1] > 0.9 * np.linalg.norm(spine.mean(axis=2), axis=1))
    np.testing.assert_allclose(out[:, :, 0, data.layout.center, 0], 0.0, atol=1e-5)


def test_bone_normalization_keeps_directions_and_zero_padding() -> None:
    x = random_people(KINECT_V1, n=2, t=10)
    x[:, :, 7:] = 0.0  # padding
    cfg = BoneNormalizeConfig(view=False, tempo=False, smooth=0, posture=False, root="keep", deadzone=0.0)
    out = normalize_bones(x, KINECT_V1, cfg)
    assert np.all(out[:, :, 7:] == 0.0) and np.abs(out[:, :, :7]).sum() > 0
    child, parent = KINECT_V1.directed_bones[5]
    d_in = x[:, :, :7, child] - x[:, :, :7, parent]
    d_out = out[:, :, :7, child] - out[:, :, :7, parent]
    cos = (d_in * d_out).sum(axis=1) / (np.linalg.norm(d_in, axis=1) * np.linalg.norm(d_out, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="joints"):
        normalize_bones(x[:, :, :, :10], KINECT_V1)


def test_fit_save_load_roundtrip_without_pickle(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = random_people(KINECT_V1, n=12, t=12)
    model = fit_anonymizer(x, rng.integers(0, 3, 12), rng.integers(0, 4, 12),
                           {"sex": rng.integers(-1, 2, 12)}, KINECT_V1, TINY)
    path = save_anonymizer(model, tmp_path / "site" / "anon")
    npz, js = model_paths(tmp_path / "site" / "anon.npz")
    assert path == js and npz.is_file() and js.is_file()
    meta = json.loads(js.read_text())
    assert meta["layout"] == "kinect-v1" and meta["config"]["channels"] == 8
    with np.load(npz, allow_pickle=False) as arrays:
        assert all(arrays[k].dtype != object for k in arrays.files)
    loaded = load_anonymizer(js)
    np.testing.assert_array_equal(loaded.anonymize(x, 0.5), model.anonymize(x, 0.5))
    assert not list((tmp_path / "site").glob("*.tmp"))
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(ValueError, match="weights_sha256"):
        load_anonymizer(js)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_anonymizer(tmp_path / "missing")


def test_anonymize_arrays_switch(tmp_path) -> None:
    x = random_people(KINECT_V1, n=4, t=12)
    none = anonymize_arrays(x, AnonymizationConfig())
    np.testing.assert_array_equal(none, x)
    assert none is not x
    np.testing.assert_array_equal(anonymize_arrays(x, AnonymizationConfig(method="bones")),
                                  normalize_bones(x, KINECT_V1))
    model = Anonymizer(KINECT_V1, TINY)
    save_anonymizer(model, tmp_path / "m")
    cfg = AnonymizationConfig(method="learned", keep_ratio=0.5, model_path=str(tmp_path / "m.json"))
    np.testing.assert_allclose(anonymize_arrays(x, cfg), model.anonymize(x, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="ntu25"):
        anonymize_arrays(x, cfg, NTU25)
    with pytest.raises(ValueError, match="method"):
        AnonymizationConfig(method="blur")
    with pytest.raises(ValueError, match="keep_ratio"):
        AnonymizationConfig(method="bones", keep_ratio=0.0)
    with pytest.raises(ValueError, match="model_path"):
        AnonymizationConfig(method="learned")


def test_fit_anonymizer_names_bad_labels() -> None:
    x = random_people(KINECT_V1, n=6, t=8)
    with pytest.raises(ValueError, match="subjects"):
        fit_anonymizer(x, np.zeros(6, int), np.zeros(5, int), {}, KINECT_V1, TINY)
    with pytest.raises(ValueError, match="attribute 'sex'"):
        fit_anonymizer(x, np.zeros(6, int), np.zeros(6, int), {"sex": np.array(["F"] * 6)}, KINECT_V1, TINY)


def test_deadzone_removes_sway_but_keeps_deliberate_movement() -> None:
    from privacy.bone_normalize import canonical_pose

    t = 40
    pose = np.repeat(canonical_pose(KINECT_V1)[None], t, axis=0)  # [T,V,3]
    hand, elbow, wrist = (KINECT_V1.index(j) for j in ("hand_right", "elbow_right", "wrist_right"))
    phase = np.linspace(0, 4 * np.pi, t)
    pose[:, hand, 0] += 0.01 * np.sin(phase)  # sway of the hand: about 0.1 rad of its short bone
    raise_ = 0.2 * np.clip(np.linspace(-1, 3, t), 0, 1)
    pose[:, wrist, 2] += raise_  # forearm raised forward, the hand goes along
    pose[:, hand, 2] += raise_
    x = pose.transpose(2, 0, 1)[None, :, :, :, None].astype(np.float32)
    base = BoneNormalizeConfig(view=False, tempo=False, smooth=0, posture=False, deadzone=0.0)
    plain = normalize_bones(x, KINECT_V1, base)
    calm = normalize_bones(x, KINECT_V1, BoneNormalizeConfig(**{**base.to_dict(), "deadzone": 0.2}))

    def direction(a: np.ndarray, child: int, parent: int) -> np.ndarray:
        d = a[0, :, :, child, 0] - a[0, :, :, parent, 0]
        return d / np.linalg.norm(d, axis=0)

    assert np.ptp(direction(plain, hand, wrist), axis=1).max() > 0.05
    assert np.ptp(direction(calm, hand, wrist), axis=1).max() < 1e-6
    assert np.ptp(direction(calm, wrist, elbow), axis=1).max() > 0.3
    with pytest.raises(ValueError, match="deadzone"):
        BoneNormalizeConfig(deadzone=-0.1)


def test_prototype_mix_pulls_people_towards_the_average_performer() -> None:
    base = random_people(KINECT_V1, n=2, t=12, seed=5)  # two "actions"
    people = random_people(KINECT_V1, n=8, t=12, seed=6) * 0.3  # personal deviations
    actions = np.tile([0, 1], 4)
    x = (base[actions] + people).astype(np.float32)
    model = fit_anonymizer(x, actions, np.repeat(np.arange(4), 2), {}, KINECT_V1,
                           AnonymizerConfig(**{**TINY.to_dict(), "action_teacher_epochs": 30, "mix": 0.8}))
    assert model.config.num_classes == 2 and model.prototypes.shape[0] == 2
    own = model.anonymize(x, 1.0, mix=0.0)
    mixed = model.anonymize(x, 1.0, mix=1.0)
    assert not np.allclose(own, mixed)
    spread = lambda a: a[actions == 0].std(axis=0).mean()  # noqa: E731
    assert spread(mixed) < 0.5 * spread(own)
    assert mixed.shape == x.shape
    with pytest.raises(ValueError, match="mix"):
        model.anonymize(x, 1.0, mix=1.5)


def test_feature_statistics_match_the_audit_and_keep_gradients_finite() -> None:
    from models.statistics import sequence_statistics
    from privacy.attackers import sequence_features

    x = random_people(KINECT_V1, n=3, t=10)
    x[0, :, 6:] = 0.0  # padding frames
    x[1, :, :, 4] = x[1, :, :1, 4]  # a joint that never moves: speed 0, sqrt'(0) is infinite
    exact = sequence_features(x, KINECT_V1)
    data = torch.from_numpy(x).requires_grad_(True)
    smooth = sequence_statistics(data, KINECT_V1, eps=1e-8)
    np.testing.assert_allclose(smooth.detach().numpy(), exact, atol=1e-3)
    smooth.sum().backward()
    assert data.grad is not None and torch.isfinite(data.grad).all() and data.grad.abs().sum() > 0


def test_recognizer_has_the_feature_part_and_older_files_still_load(tmp_path) -> None:
    x = random_people(KINECT_V1, n=12, t=12)
    actions, subjects = np.tile([0, 1, 2], 4), np.repeat(np.arange(4), 3)
    cfg = {**TINY.to_dict(), "action_teacher_epochs": 2, "mix": 0.8}
    model = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, AnonymizerConfig(**cfg))
    assert model.teacher is not None and len(model.teacher) == 3 * 3  # three recognizers of three parts
    one = {**cfg, "teacher_features": False, "teacher_ensemble": 1}
    old = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, AnonymizerConfig(**one))
    assert old.teacher is not None and len(old.teacher) == 2
    js = save_anonymizer(old, tmp_path / "old")
    meta = json.loads(js.read_text())
    meta["version"] = 1  # as written before the feature part and the ensemble existed
    del meta["config"]["teacher_features"], meta["config"]["teacher_batch_size"], meta["config"]["teacher_ensemble"]
    js.write_text(json.dumps(meta))
    loaded = load_anonymizer(js)
    assert loaded.config.teacher_features is False and loaded.config.teacher_ensemble == 1
    np.testing.assert_array_equal(loaded.anonymize(x, 1.0), old.anonymize(x, 1.0))
    meta["version"] = 9
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version"):
        load_anonymizer(js)


def test_version_2_files_carry_one_recognizer_and_new_files_keep_the_ensemble(tmp_path) -> None:
    x = random_people(KINECT_V1, n=12, t=12)
    actions, subjects = np.tile([0, 1, 2], 4), np.repeat(np.arange(4), 3)
    cfg = {**TINY.to_dict(), "action_teacher_epochs": 2, "mix": 0.8}
    single = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, AnonymizerConfig(**{**cfg, "teacher_ensemble": 1}))
    js = save_anonymizer(single, tmp_path / "v2")
    meta = json.loads(js.read_text())
    meta["version"] = 2
    del meta["config"]["teacher_ensemble"]
    js.write_text(json.dumps(meta))
    assert load_anonymizer(js).config.teacher_ensemble == 1
    triple = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, AnonymizerConfig(**cfg))
    loaded = load_anonymizer(save_anonymizer(triple, tmp_path / "v3"))
    assert loaded.config.teacher_ensemble == 3 and len(loaded.teacher) == 9
    np.testing.assert_array_equal(loaded.anonymize(x, 1.0), triple.anonymize(x, 1.0))
    with pytest.raises(ValueError, match="teacher_ensemble"):
        AnonymizerConfig(teacher_ensemble=0)


def test_the_ensembles_recognizers_start_apart_and_all_of_them_choose_the_prototype() -> None:
    """Copies from the same initialization would be one recognizer counted three times."""
    x = random_people(KINECT_V1, n=12, t=12)
    actions, subjects = np.tile([0, 1, 2], 4), np.repeat(np.arange(4), 3)
    cfg = AnonymizerConfig(**{**TINY.to_dict(), "action_teacher_epochs": 2, "mix": 0.8, "prototype_choice": "soft"})
    model = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, cfg)
    assert model.teacher is not None
    cnns = [model.teacher[k * 3] for k in range(3)]
    first = [p.detach() for p in cnns[0].parameters()]
    for other in cnns[1:]:
        assert any(not torch.equal(a, b.detach()) for a, b in zip(first, other.parameters()))
    xn = torch.from_numpy(model.prepare(x))
    before = model.predicted_prototype(xn)
    with torch.no_grad():  # the last part of the last recognizer now says action 2 for everyone
        head = model.teacher[8].head.heads[0]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    after = model.predicted_prototype(xn)
    assert not torch.allclose(before, after)  # soft choice: every part's probabilities weigh in


def test_an_anonymizer_without_a_frozen_recognizer_trains_one_alongside() -> None:
    x = random_people(KINECT_V1, n=12, t=12)
    actions, subjects = np.tile([0, 1, 2], 4), np.repeat(np.arange(4), 3)
    cfg = AnonymizerConfig(**{**TINY.to_dict(), "action_teacher_epochs": 0, "mix": 0.0})
    model = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, cfg)
    assert model.teacher is None
    out = model.anonymize(x, 1.0)
    assert out.shape == x.shape and np.isfinite(out).all()


def test_given_prototypes_are_painted_and_must_cover_every_action() -> None:
    x = random_people(KINECT_V1, n=12, t=12)
    actions, subjects = np.tile([0, 1, 2], 4), np.repeat(np.arange(4), 3)
    pool_x, pool_a = random_people(KINECT_V1, n=9, t=12, seed=3), np.tile([0, 1, 2], 3)
    cfg = AnonymizerConfig(**{**TINY.to_dict(), "action_teacher_epochs": 1, "mix": 1.0, "teacher_ensemble": 1})
    own = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, cfg)
    given = action_prototypes(pool_x, pool_a, KINECT_V1, cfg.bones)
    pooled = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, cfg, prototypes=given)
    canon = normalize_bones(pool_x, KINECT_V1, cfg.bones)
    for a in range(3):
        np.testing.assert_allclose(pooled.prototypes[a].numpy(), canon[pool_a == a].mean(axis=0), atol=1e-5)
    assert not torch.allclose(own.prototypes, pooled.prototypes)
    with pytest.raises(ValueError, match=r"action code\(s\) \[1\]"):
        action_prototypes(pool_x[:6], np.tile([0, 2], 3), KINECT_V1)
    with pytest.raises(ValueError, match="at least 3"):  # fewer actions than the training data
        fit_anonymizer(x, actions, subjects, {}, KINECT_V1, cfg, prototypes=given[:2])
    with pytest.raises(ValueError, match="prototypes are"):  # other frame count
        fit_anonymizer(x, actions, subjects, {}, KINECT_V1, cfg, prototypes=given[:, :, :10])


def test_by_default_only_the_recognizers_and_prototypes_are_fitted() -> None:
    """The adversarial displacement is off by default (it leaked identity in the audit):
    at mix 0 the default model returns its canonical-body input unchanged."""
    assert AnonymizerConfig().epochs == 0 and AnonymizerConfig().mix == 0.95
    x = random_people(KINECT_V1, n=12, t=12)
    actions, subjects = np.tile([0, 1, 2], 4), np.repeat(np.arange(4), 3)
    cfg = {**TINY.to_dict(), "action_teacher_epochs": 2, "teacher_ensemble": 1}
    plain = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, AnonymizerConfig(**{**cfg, "epochs": 0}))
    assert torch.count_nonzero(plain.out.weight) == 0
    np.testing.assert_allclose(plain.anonymize(x, 1.0, mix=0.0), plain.prepare(x), atol=1e-5)
    trained = fit_anonymizer(x, actions, subjects, {}, KINECT_V1, AnonymizerConfig(**{**cfg, "epochs": 1}))
    assert torch.count_nonzero(trained.out.weight) > 0
    assert not np.allclose(trained.anonymize(x, 1.0, mix=0.0), trained.prepare(x), atol=1e-5)
    with pytest.raises(ValueError, match="epochs"):
        AnonymizerConfig(epochs=-1)
