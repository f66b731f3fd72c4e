"""Leakage audit: splits, fresh attackers trained on the audited arrays, re-identification
falling under protection while action recognition holds, and the audit.json schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privacy import attackers
from privacy.audit import (
    AuditConfig,
    AuditData,
    AuditPlan,
    audit_arrays,
    measure_folds,
    measure_reid,
    reid_split,
    subject_folds,
    train_attacker,
)
from privacy.bone_normalize import normalize_bones


@pytest.fixture(scope="module")
def synthetic() -> AuditData:
    """Six synthetic people whose body and style identify them, four actions."""
    from skeletons.preprocess import PreprocessConfig, to_arrays
    from skeletons.synthetic import generate_synthetic

    data = generate_synthetic(num_classes=4, num_subjects=6, samples_per_class_subject=5, num_frames=32, seed=0)
    x, y = to_arrays(data, PreprocessConfig(num_frames=32))
    return AuditData(x, y, np.array([s.subject for s in data]), data.layout,
                     {"sex": np.array([s.attributes["sex"] for s in data]),
                      "group": np.array([s.attributes["group"] for s in data])})


def test_splits_keep_subjects_apart_where_they_must() -> None:
    subjects = np.repeat(np.array(["a", "b", "c", "d", "e", "f"]), 10)
    train = reid_split(subjects, 0.7, seed=0)
    for s in np.unique(subjects):  # every subject on both sides, 7 of 10 in training
        assert train[subjects == s].sum() == 7
    strata = np.repeat(np.array([0, 0, 0, 1, 1, 1]), 10)
    folds = subject_folds(subjects, strata, 3, seed=0)
    for s in np.unique(subjects):
        assert len(set(folds[subjects == s])) == 1  # a subject never straddles folds
    for f in range(3):  # stratified: one subject of each stratum per fold
        assert sorted(strata[folds == f][::10]) == [0, 1]


def test_attackers_are_fresh_and_trained_on_the_arrays_passed_in(synthetic: AuditData) -> None:
    protected = normalize_bones(synthetic.x, synthetic.layout)
    rows = {r.tobytes() for r in protected}
    calls = []

    def spy(kind, x, y, num_classes, config, layout):
        assert all(r.tobytes() in rows for r in x)  # only protected sequences are seen
        fresh = attackers.make_classifier(kind, x.shape, layout, num_classes, config)
        model = attackers.make_classifier(kind, x.shape, layout, num_classes, config)
        for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), name  # initial weights are those of a new network
        trained = attackers.fit(model, x, y, config)
        calls.append(trained)
        return trained

    cfg = AuditConfig(attackers=("features",), epochs=2, folds=2, linkage_pairs=100)
    result = audit_arrays(synthetic.with_x(protected), cfg, trainer=spy)
    assert len(calls) == 1 + 2 * 2 + 1  # re-id, (attributes + action) per fold, linkage
    assert len({id(m) for m in calls}) == len(calls)  # never the same network twice
    assert result["sequences"] == len(protected)


def test_default_trainer_builds_a_new_network_each_time(synthetic: AuditData) -> None:
    cfg = attackers.TrainConfig(epochs=1)
    codes = synthetic.subject_codes()
    a = train_attacker("cnn", synthetic.x[:20], codes[:20], [6], cfg, synthetic.layout)
    b = train_attacker("cnn", synthetic.x[20:40], codes[20:40], [6], cfg, synthetic.layout)
    assert a is not b
    assert not torch.equal(a.norm.mean, b.norm.mean)  # standardized on its own training arrays


def test_reidentification_drops_under_protection_while_action_holds(synthetic: AuditData) -> None:
    cfg = AuditConfig(attackers=("features",), epochs=25, folds=3)
    raw_reid = measure_reid(synthetic, cfg)["features"]["top1"]
    protected = synthetic.with_x(normalize_bones(synthetic.x, synthetic.layout))
    prot_reid = measure_reid(protected, cfg)["features"]["top1"]
    prot_action = measure_folds(protected, cfg)["features"]["action_top1"]
    assert raw_reid >= 0.6
    assert prot_reid <= raw_reid - 0.3
    assert prot_action >= 0.7  # chance is 0.25


@pytest.mark.slow
def test_audit_command_writes_the_documented_json(tmp_path, monkeypatch) -> None:
    from privacy import audit_cmd
    from privacy.cli import main
    from skeletons.cache import Prepared

    def small(args):
        from skeletons.preprocess import PreprocessConfig, to_arrays
        from skeletons.synthetic import generate_synthetic

        data = generate_synthetic(num_classes=3, num_subjects=4, samples_per_class_subject=3, num_frames=16)
        x, y = to_arrays(data, PreprocessConfig(num_frames=16))
        return Prepared(x, y, [dict(s.meta) for s in data], list(data.classes), data.layout.name)

    monkeypatch.setattr(audit_cmd, "load_prepared", small)
    out = tmp_path / "audit"
    code = main(["audit", "--dataset", "synthetic", "--out", str(out), "--method", "both",
                 "--keep-ratios", "1,0.5", "--epochs", "1", "--folds", "2", "--anonymizer-epochs", "1",
                 "--attackers", "features", "--threads", "1", "--recognizers", "2", "--anonymizer-folds", "2"])
    assert code == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["plan"]["anonymizer"]["teacher_ensemble"] == 2
    for section in ("raw", "protected"):
        r = report[section]
        for key in ("reid_top1", "reid_top5", "linkage_accuracy", "action_top1"):
            assert 0.0 <= r[key] <= 1.0, (section, key)
        assert set(r["attributes"]) == {"sex", "group"}
        assert all(0.0 <= v <= 1.0 for v in r["attributes"].values())
    assert set(report["protected_by_method"]) == {"bones", "learned"}
    assert [(s["method"], s["keep_ratio"]) for s in report["sweep"]] == [("bones", 1.0), ("learned", 1.0), ("learned", 0.5)]
    assert report["dataset"]["subjects"] == 4
    png = out / report["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_audit_rejects_bad_plans(synthetic: AuditData) -> None:
    with pytest.raises(ValueError, match="bones and/or learned"):
        AuditPlan(methods=("blur",))
    with pytest.raises(ValueError, match="keep ratio"):
        AuditPlan(keep_ratios=(1.5,))
    with pytest.raises(ValueError, match="unknown attacker"):
        AuditConfig(attackers=("oracle",))
    with pytest.raises(ValueError, match="subjects has 3 values"):
        AuditData(synthetic.x, synthetic.actions, synthetic.subjects[:3], synthetic.layout)


def test_groups_confine_reidentification_and_linkage_to_one_anonymizer(synthetic: AuditData) -> None:
    from privacy.audit import _pairs, reid_chance

    groups = (np.searchsorted(np.unique(synthetic.subjects), synthetic.subjects) >= 3).astype(int)
    grouped = AuditData(synthetic.x, synthetic.actions, synthetic.subjects, synthetic.layout, groups=groups)
    assert reid_chance(grouped, 1) == pytest.approx(1 / 3)
    assert reid_chance(synthetic, 1) == pytest.approx(1 / 6)
    pairs, same = _pairs(grouped.subjects, np.arange(len(groups)), 200, np.random.default_rng(0), groups)
    assert same.sum() == 100
    assert np.all(groups[pairs[:, 0]] == groups[pairs[:, 1]])  # negatives too come from one group
    assert np.all((grouped.subjects[pairs[:, 0]] == grouped.subjects[pairs[:, 1]]) == same)
    seen = []

    def spy(kind, x, y, num_classes, config, layout):
        seen.append(num_classes[0])
        return train_attacker(kind, x, y, num_classes, config, layout)

    measure_reid(grouped, AuditConfig(attackers=("features",), epochs=1), trainer=spy)
    assert seen == [3, 3]  # one re-identifier per group, each over its own three people


def test_recognizer_bench_tests_on_participants_it_never_trained_on(synthetic: AuditData, tmp_path) -> None:
    """``python -m privacy.recognizer_bench`` trains the anonymizer's recognizer on one
    cross-fitting group and scores it on the other: the groups must not share a person,
    and on actions this distinct the unseen top-1 must be well above chance (25%)."""
    from privacy import recognizer_bench
    from privacy.anonymizer import AnonymizerConfig
    from privacy.audit import anonymizer_groups

    groups = anonymizer_groups(synthetic, 2, 0)
    assert not set(synthetic.subjects[groups == 0]) & set(synthetic.subjects[groups == 1])
    seen: list[set] = []
    real = recognizer_bench.unseen_top1

    def recording(data, train, config, seed):
        seen.append(set(data.subjects[train]))
        return real(data, train, config, seed)

    recognizer_bench.unseen_top1 = recording
    try:
        report = recognizer_bench.run_bench(synthetic, AnonymizerConfig(action_teacher_epochs=8), [1], 0)
    finally:
        recognizer_bench.unseen_top1 = real
    assert seen == [set(synthetic.subjects[groups == 0]), set(synthetic.subjects[groups == 1])]
    assert report["subjects_per_group"] == [3, 3]
    assert set(report["mean_top1"]) == {"averaged", *recognizer_bench.PART_NAMES}
    assert report["mean_top1"]["averaged"] > 0.5, report["mean_top1"]


def test_shared_prototypes_give_every_cross_fitted_model_one_vocabulary(synthetic: AuditData) -> None:
    """At mix 1 an output is the painted prototype alone: with shared prototypes the two
    folds' models can only produce the same four motions, with their own eight."""
    from privacy.anonymizer import AnonymizerConfig
    from privacy.audit import cross_fit_anonymize

    cfg = AnonymizerConfig(channels=8, blocks=1, epochs=1, batch_size=16, adversary_hidden=8,
                           action_teacher_epochs=3, teacher_ensemble=1, mix=1.0)

    def distinct(shared: bool) -> int:
        out = cross_fit_anonymize(synthetic, cfg, [1.0], folds=2, shared_prototypes=shared)[(1.0, 1.0)]
        return len(np.unique(out.reshape(len(out), -1).round(4), axis=0))

    assert distinct(True) <= 4
    assert distinct(False) > 4


def test_reid_scope_all_measures_among_every_subject(synthetic: AuditData) -> None:
    from privacy.anonymizer import AnonymizerConfig
    from privacy.audit import run_audit

    anon = AnonymizerConfig(channels=8, blocks=1, epochs=1, batch_size=16, adversary_hidden=8,
                            action_teacher_epochs=1, teacher_ensemble=1)
    cfg = AuditConfig(attackers=("features",), epochs=1, folds=2)
    plan = AuditPlan(methods=("learned",), anonymizer=anon, anonymizer_folds=2, reid_scope="all",
                     shared_prototypes=True)
    report = run_audit(synthetic, plan, cfg, progress=lambda msg: None)
    for section in ("raw", "protected"):  # six people, not the three of one model's group
        assert report[section]["chance"]["reid_top1"] == pytest.approx(1 / 6)
    assert report["plan"]["reid_scope"] == "all" and report["plan"]["shared_prototypes"] is True
    with pytest.raises(ValueError, match="scope"):
        AuditPlan(reid_scope="site")


def test_auto_scope_pools_subjects_only_where_the_models_cannot_leave_their_own_trace(synthetic: AuditData) -> None:
    from privacy.anonymizer import AnonymizerConfig
    from privacy.audit import resolved_reid_scope, run_audit

    untrained, trained = AnonymizerConfig(epochs=0), AnonymizerConfig(epochs=2)
    assert resolved_reid_scope(AuditPlan(methods=("learned",), anonymizer=untrained)) == "all"
    assert resolved_reid_scope(AuditPlan(methods=("learned",), anonymizer=trained)) == "group"
    assert resolved_reid_scope(AuditPlan(methods=("learned",), anonymizer=untrained, shared_prototypes=False)) == "group"
    assert resolved_reid_scope(AuditPlan(methods=("learned",), anonymizer=trained, anonymizer_folds=1)) == "all"
    assert resolved_reid_scope(AuditPlan(methods=("bones",))) == "all"
    assert resolved_reid_scope(AuditPlan(methods=("learned",), anonymizer=trained, reid_scope="all")) == "all"
    # six subjects in six folds: a group of one person would be "re-identified" every time
    plan = AuditPlan(methods=("learned",), anonymizer=trained, anonymizer_folds=6)
    with pytest.raises(ValueError, match="2 or more subjects per group.*leave 1"):
        run_audit(synthetic, plan, AuditConfig(attackers=("features",), epochs=1), progress=lambda msg: None)


def test_an_untrained_anonymizer_is_audited_once_and_labelled_without_a_privacy_weight(synthetic: AuditData) -> None:
    from privacy.anonymizer import AnonymizerConfig
    from privacy.audit import format_table, run_audit

    anon = AnonymizerConfig(channels=8, blocks=1, epochs=0, adversary_hidden=8, action_teacher_epochs=1,
                            teacher_ensemble=1)
    said: list[str] = []
    plan = AuditPlan(methods=("learned",), anonymizer=anon, anonymizer_folds=2, privacy_weights=(0.3, 1.0))
    report = run_audit(synthetic, plan, AuditConfig(attackers=("features",), epochs=1, folds=2), progress=said.append)
    assert [(s["privacy_weight"], s["anonymizer_epochs"]) for s in report["sweep"]] == [(0.3, 0)]
    assert any("weight 0.3 only" in line for line in said)
    table = format_table(report)
    assert "learned k=1 mix=0.95" in table and "w=" not in table
