"""Leakage audit: what fresh attackers learn from raw versus protected skeletons.

Every number comes from networks built and trained from scratch on the arrays being
audited (:mod:`privacy.attackers`); nothing the anonymizer trained is reused. For each
measure several attacker families are trained and the strongest is reported, so a
protection only counts when it holds against all of them.

Protocols (``AuditData`` carries one sequence per row):

- **re-identification**: per subject, ``reid_train_fraction`` of the sequences train a
  subject classifier, the rest test it; top-1 and top-5 (chance ``1/subjects``).
- **attributes** (e.g. sex, child or adult): subject-disjoint folds stratified by the
  attribute values; accuracy over all held-out sequences (chance: the majority class).
- **linkage**: are two sequences from the same person? An embedding network is trained
  on the subjects of one half, a distance threshold is chosen on pairs of that half, and
  accuracy is measured on balanced pairs of the other half's subjects (chance 50%).
- **action**: an independent action classifier on the same subject-disjoint folds.

:func:`run_audit` adds anonymization: bone normalization and/or the learned anonymizer,
fitted by cross-fitting over subjects (each subject is anonymized by a model that never
saw them) and swept over keep ratios, prototype mixes and privacy weights. Different
models may leave different traces, which would let an attacker tell the models' groups
of subjects apart; a site runs one model, so such a trace is an artifact of the audit.
By default every model paints the same prototypes (averaged over all subjects, as a
site's one model averages over all of its people), and where the models then differ only
in which prototype their recognizer picks (the network untrained, ``epochs=0``),
re-identification and linkage are measured among all subjects; where a trained network
could leave its own trace, within each model's group, for raw and protected data alike
(chance ``1/group size``). ``AuditPlan.reid_scope`` overrides the choice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from privacy import attackers
from privacy.anonymizer import Anonymizer, AnonymizerConfig, action_prototypes, fit_anonymizer
from privacy.bone_normalize import BoneNormalizeConfig, normalize_bones
from skeletons.layouts import Layout

log = logging.getLogger(__name__)

METRICS = ("reid_top1", "reid_top5", "linkage_accuracy", "action_top1")


@dataclass(frozen=True)
class AuditConfig:
    """Attacker families and training budget; defaults fit CPU minutes per audit."""

    attackers: tuple[str, ...] = attackers.ATTACKER_KINDS
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    hidden: int = 64
    reid_train_fraction: float = 0.7
    folds: int = 5
    linkage_pairs: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in self.attackers:
            if kind not in attackers.ATTACKER_KINDS:
                raise ValueError(f"unknown attacker {kind!r}; known: {', '.join(attackers.ATTACKER_KINDS)}")
        if not self.attackers:
            raise ValueError("an audit needs at least one attacker kind")
        if not 0.0 < self.reid_train_fraction < 1.0:
            raise ValueError(f"reid_train_fraction must be in (0, 1), got {self.reid_train_fraction}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")

    def train_config(self, seed_offset: int = 0) -> attackers.TrainConfig:
        return attackers.TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                     hidden=self.hidden, seed=self.seed + seed_offset)


@dataclass
class AuditData:
    """Arrays of one data set: ``x [N,3,T,V,M]``, action codes, subjects, attributes.

    ``attributes`` maps a name (``sex``, ``group``) to per-sequence values; ``None`` or
    ``""`` marks an unknown value. ``groups`` (optional) marks sequences protected by the
    same anonymizer model: re-identification and linkage are then measured within each
    group, so that telling models apart (a cross-fitting artifact a site with one model
    does not have) is not counted as telling people apart.
    """

    x: np.ndarray
    actions: np.ndarray
    subjects: np.ndarray
    layout: Layout
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"groups has {len(self.groups)} values for {n} sequences")
        if self.x.ndim != 5 or self.x.shape[1] != 3:
            raise ValueError(f"audit arrays must be [N, 3, T, V, M], got shape {tuple(self.x.shape)}")
        if self.x.shape[3] != self.layout.num_joints:
            raise ValueError(f"audit arrays have {self.x.shape[3]} joints, layout {self.layout.name!r} has "
                             f"{self.layout.num_joints}")
        self.actions = np.asarray(self.actions).astype(np.int64)
        self.subjects = np.asarray(self.subjects).astype(str)
        for name, values in (("actions", self.actions), ("subjects", self.subjects),
                             *((f"attribute {k!r}", v) for k, v in self.attributes.items())):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} sequences")

    def with_x(self, x: np.ndarray) -> "AuditData":
        """The same labels around other (protected) arrays."""
        return AuditData(x, self.actions, self.subjects, self.layout, self.attributes, self.groups)

    def subject_codes(self) -> np.ndarray:
        return np.unique(self.subjects, return_inverse=True)[1].astype(np.int64)

    def attribute_codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Integer codes (``-1`` unknown) and the value names."""
        raw = np.array(["" if v is None else str(v) for v in self.attributes[name]])
        names = sorted(set(raw) - {""})
        lookup = {v: i for i, v in enumerate(names)}
        return np.array([lookup.get(v, -1) for v in raw], dtype=np.int64), names


# ------------------------------------------------------------------------- splits


def reid_split(subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean train mask: ``fraction`` of each subject's sequences (at least one each way)."""
    rng = np.random.default_rng(seed)
    train = np.zeros(len(subjects), dtype=bool)
    for s in np.unique(subjects):
        idx = np.flatnonzero(subjects == s)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else len(idx)
        train[idx[:k]] = True
    return train


def subject_folds(subjects: np.ndarray, strata: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per sequence; subjects dealt round-robin within each stratum."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(subjects)
    folds = min(folds, len(uniq))
    stratum = {s: str(strata[subjects == s][0]) for s in uniq}
    fold_of: dict[str, int] = {}
    offset = 0
    for value in sorted(set(stratum.values())):
        members = [s for s in uniq if stratum[s] == value]
        rng.shuffle(members)
        for i, s in enumerate(members):
            fold_of[s] = (offset + i) % folds
        offset += len(members)
    return np.array([fold_of[s] for s in subjects], dtype=np.int64)


def _strata(data: AuditData) -> np.ndarray:
    """Per-sequence combination of all attribute values (for stratified folds)."""
    if not data.attributes:
        return np.zeros(len(data.x), dtype=np.int64)
    combos = np.stack([data.attribute_codes(a)[0] for a in sorted(data.attributes)], axis=1)
    return np.unique(combos, axis=0, return_inverse=True)[1].reshape(-1)


# ------------------------------------------------------------------------- measures


Trainer = Callable[[str, np.ndarray, np.ndarray, Sequence[int], attackers.TrainConfig, Layout], Any]


def train_attacker(kind: str, x: np.ndarray, y: np.ndarray, num_classes: Sequence[int],
                   config: attackers.TrainConfig, layout: Layout) -> Any:
    """A brand-new network of ``kind`` trained only on ``(x, y)``."""
    model = attackers.make_classifier(kind, x.shape, layout, num_classes, config)
    return attackers.fit(model, x, y, config)


def _topk(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def _groups(data: AuditData) -> np.ndarray:
    return np.zeros(len(data.x), dtype=np.int64) if data.groups is None else np.asarray(data.groups)


def measure_reid(data: AuditData, cfg: AuditConfig, trainer: Trainer = train_attacker) -> dict[str, Any]:
    train = reid_split(data.subjects, cfg.reid_train_fraction, cfg.seed)
    groups = _groups(data)
    out: dict[str, Any] = {}
    for i, kind in enumerate(cfg.attackers):
        hits1 = hits5 = tested = 0.0
        for g in np.unique(groups):
            member = groups == g
            codes = np.unique(data.subjects[member], return_inverse=True)[1]
            tr, te = train[member], ~train[member]
            xg = data.x[member]
            model = trainer(kind, xg[tr], codes[tr], [int(codes.max()) + 1], cfg.train_config(10 + i), data.layout)
            logits = attackers.predict(model, xg[te])[0]
            hits1 += _topk(logits, codes[te], 1) * te.sum()
            hits5 += _topk(logits, codes[te], 5) * te.sum()
            tested += te.sum()
        out[kind] = {"top1": hits1 / max(tested, 1), "top5": hits5 / max(tested, 1)}
    return out


def reid_chance(data: AuditData, k: int) -> float:
    """Chance top-k re-identification, averaged over groups by their sequences."""
    groups = _groups(data)
    total = 0.0
    for g in np.unique(groups):
        member = groups == g
        n = len(np.unique(data.subjects[member]))
        total += min(k, n) / n * member.sum()
    return float(total / len(groups))


def measure_folds(data: AuditData, cfg: AuditConfig, trainer: Trainer = train_attacker) -> dict[str, Any]:
    """Attributes and action on the same subject-disjoint folds (separate networks)."""
    folds = subject_folds(data.subjects, _strata(data), cfg.folds, cfg.seed)
    names = sorted(data.attributes)
    attr = [data.attribute_codes(a) for a in names]
    attr_y = np.stack([c for c, _ in attr], axis=1) if names else np.zeros((len(data.x), 0), np.int64)
    n_act = int(data.actions.max()) + 1
    result: dict[str, Any] = {}
    for i, kind in enumerate(cfg.attackers):
        attr_pred = np.full(attr_y.shape, -1, dtype=np.int64)
        act_pred = np.full(len(data.x), -1, dtype=np.int64)
        for f in np.unique(folds):
            test = folds == f
            tc = cfg.train_config(100 * (i + 1) + int(f))
            if names:
                m = trainer(kind, data.x[~test], attr_y[~test], [max(1, len(v)) for _, v in attr], tc, data.layout)
                for h, logits in enumerate(attackers.predict(m, data.x[test])):
                    attr_pred[test, h] = logits.argmax(axis=1)
            m = trainer(kind, data.x[~test], data.actions[~test], [n_act], tc, data.layout)
            act_pred[test] = attackers.predict(m, data.x[test])[0].argmax(axis=1)
        entry: dict[str, Any] = {"action_top1": float((act_pred == data.actions).mean()), "attributes": {}}
        for h, name in enumerate(names):
            known = attr_y[:, h] >= 0
            entry["attributes"][name] = float((attr_pred[known, h] == attr_y[known, h]).mean()) if known.any() else None
        result[kind] = entry
    return result


def measure_linkage(data: AuditData, cfg: AuditConfig, trainer: Trainer = train_attacker) -> dict[str, Any]:
    uniq = np.unique(data.subjects)
    if len(uniq) < 4:
        return {}
    folds = subject_folds(data.subjects, _strata(data), 2, cfg.seed + 7)
    rng = np.random.default_rng(cfg.seed + 7)
    out: dict[str, Any] = {}
    for half in (0, 1):  # pairs need two people and one person seen twice on each side
        subj = data.subjects[folds == half]
        counts = np.unique(subj, return_counts=True)[1]
        if len(counts) < 2 or counts.max() < 2:
            return {}
    for i, kind in enumerate(cfg.attackers):
        a = folds == 0
        codes = np.unique(data.subjects[a], return_inverse=True)[1]
        model = trainer(kind, data.x[a], codes, [int(codes.max()) + 1], cfg.train_config(200 + i), data.layout)
        emb = attackers.embed(model, data.x)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)
        train_pairs = _pairs(data.subjects, np.flatnonzero(a), cfg.linkage_pairs, rng, _groups(data))
        test_pairs = _pairs(data.subjects, np.flatnonzero(~a), cfg.linkage_pairs, rng, _groups(data))
        threshold = _best_threshold(_similarity(emb, train_pairs[0]), train_pairs[1])
        sim = _similarity(emb, test_pairs[0])
        out[kind] = {"accuracy": float(((sim >= threshold) == test_pairs[1]).mean()), "threshold": threshold}
    return out


def _pairs(subjects: np.ndarray, idx: np.ndarray, count: int, rng: np.random.Generator,
           groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced pairs of indices: half from one subject, half from two different subjects
    of the same group (falling back to any two subjects where a group has only one)."""
    subj = subjects[idx]
    pos, neg = [], []
    by_subject = {s: idx[subj == s] for s in np.unique(subj)}
    multi = [s for s, v in by_subject.items() if len(v) > 1]
    half = count // 2
    for _ in range(half):
        s = multi[rng.integers(len(multi))]
        a, b = rng.choice(by_subject[s], 2, replace=False)
        pos.append((a, b))
        for attempt in range(200):
            a, b = rng.choice(idx, 2, replace=False)
            if subjects[a] != subjects[b] and (groups[a] == groups[b] or attempt > 100):
                neg.append((a, b))
                break
    pairs = np.array(pos + neg, dtype=np.int64)
    same = np.array([True] * len(pos) + [False] * len(neg))
    return pairs, same


def _similarity(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(axis=1)


def _best_threshold(sim: np.ndarray, same: np.ndarray) -> float:
    candidates = np.unique(sim)
    acc = [((sim >= t) == same).mean() for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def audit_arrays(data: AuditData, config: AuditConfig | None = None,
                 trainer: Trainer = train_attacker) -> dict[str, Any]:
    """All measures on ``data``; the strongest attacker per measure is reported.

    ``trainer(kind, x, y, num_classes, train_config, layout)`` builds and trains each
    attacker; the default always builds a new network.
    """
    cfg = config or AuditConfig()
    start = time.perf_counter()
    reid = measure_reid(data, cfg, trainer)
    folds = measure_folds(data, cfg, trainer)
    link = measure_linkage(data, cfg, trainer)
    n_subj = len(np.unique(data.subjects))
    best = lambda values: max(values) if values else None  # noqa: E731
    attrs = {}
    for name in sorted(data.attributes):
        vals = [v["attributes"][name] for v in folds.values() if v["attributes"].get(name) is not None]
        attrs[name] = best(vals)
    chance_attr = {}
    for name in sorted(data.attributes):
        codes, _ = data.attribute_codes(name)
        known = codes[codes >= 0]
        chance_attr[name] = float(np.bincount(known).max() / len(known)) if len(known) else None
    return {
        "reid_top1": best([v["top1"] for v in reid.values()]),
        "reid_top5": best([v["top5"] for v in reid.values()]),
        "linkage_accuracy": best([v["accuracy"] for v in link.values()]),
        "action_top1": best([v["action_top1"] for v in folds.values()]),
        "attributes": attrs,
        "chance": {
            "reid_top1": reid_chance(data, 1),
            "reid_top5": reid_chance(data, 5),
            "linkage_accuracy": 0.5,
            "action_top1": float(np.bincount(data.actions).max() / len(data.actions)),
            "attributes": chance_attr,
        },
        "by_attacker": {kind: {"reid": reid.get(kind), "linkage": link.get(kind), **folds.get(kind, {})}
                        for kind in cfg.attackers},
        "sequences": int(len(data.x)),
        "subjects": n_subj,
        "reid_groups": int(len(np.unique(_groups(data)))),
        "seconds": round(time.perf_counter() - start, 1),
    }


# ------------------------------------------------------------------------- anonymization


def cross_fit_anonymize(data: AuditData, config: AnonymizerConfig, keep_ratios: Sequence[float],
                        folds: int = 2, attributes: Sequence[str] | None = None,
                        progress: Callable[[str], None] | None = None,
                        mixes: Sequence[float] | None = None,
                        shared_prototypes: bool = False) -> dict[tuple[float, float], np.ndarray]:
    """Protected arrays per (keep ratio, prototype mix); each subject's sequences are
    anonymized by a model trained on the other folds' subjects only (``folds=1``: one
    model fitted on all, which then has seen the audited people).

    ``shared_prototypes``: every model paints the prototypes of all subjects (what a
    site's single model does) instead of its training subjects' own, so the models'
    outputs share one vocabulary of motions and an attacker cannot tell them apart by it.
    """
    names = sorted(attributes if attributes is not None else data.attributes)
    mixes = [config.mix] if mixes is None else list(mixes)
    out = {(float(k), float(m)): np.zeros_like(data.x) for k in keep_ratios for m in mixes}
    fold = anonymizer_groups(data, folds, config.seed)
    shared = action_prototypes(data.x, data.actions, data.layout, config.bones) if shared_prototypes else None
    for f in np.unique(fold):
        test = fold == f
        train = ~test if folds > 1 else test
        subj = np.unique(data.subjects[train], return_inverse=True)[1]
        attrs = {a: data.attribute_codes(a)[0][train] for a in names}
        t0 = time.perf_counter()
        model = fit_anonymizer(data.x[train], data.actions[train], subj, attrs, data.layout, config,
                               prototypes=shared)
        if progress:
            progress(f"anonymizer fold {int(f) + 1}/{len(np.unique(fold))} fitted in {time.perf_counter() - t0:.0f}s")
        for k, m in out:
            out[(k, m)][test] = model.anonymize(data.x[test], k, mix=m)
    return out


def anonymizer_groups(data: AuditData, folds: int, seed: int) -> np.ndarray:
    """Which cross-fitted anonymizer protects each sequence (all zeros for ``folds=1``)."""
    if folds == 1:
        return np.zeros(len(data.x), dtype=np.int64)
    return subject_folds(data.subjects, _strata(data), folds, seed + 11)


def fit_on_all(data: AuditData, config: AnonymizerConfig, attributes: Sequence[str] | None = None) -> Anonymizer:
    """One anonymizer trained on the whole data set (what a site deploys)."""
    names = sorted(attributes if attributes is not None else data.attributes)
    attrs = {a: data.attribute_codes(a)[0] for a in names}
    return fit_anonymizer(data.x, data.actions, data.subject_codes(), attrs, data.layout, config)


@dataclass
class AuditPlan:
    """What :func:`run_audit` protects and sweeps."""

    methods: tuple[str, ...] = ("bones",)
    keep_ratios: tuple[float, ...] = (1.0,)
    privacy_weights: tuple[float, ...] = (1.0,)
    mixes: tuple[float, ...] = (AnonymizerConfig.mix,)
    bones: BoneNormalizeConfig = field(default_factory=BoneNormalizeConfig)
    anonymizer: AnonymizerConfig = field(default_factory=AnonymizerConfig)
    anonymizer_folds: int = 4  # each model learns from 3/4 of the subjects
    shared_prototypes: bool = True  # see cross_fit_anonymize
    reid_scope: str = "auto"  # "group": within each cross-fitted model's subjects; "all": everyone

    def __post_init__(self) -> None:
        if self.reid_scope not in ("auto", "group", "all"):
            raise ValueError(f"re-identification scope must be auto, group or all, not {self.reid_scope!r}")
        if self.anonymizer_folds < 1:
            raise ValueError(f"anonymizer folds must be >= 1, got {self.anonymizer_folds}")
        bad = [m for m in self.methods if m not in ("bones", "learned")]
        if bad or not self.methods:
            raise ValueError(f"audit methods must be bones and/or learned, got {list(self.methods)}")
        for k in self.keep_ratios:
            if not 0.0 < k <= 1.0:
                raise ValueError(f"keep ratio {k} must be in (0, 1]")
        for w in self.privacy_weights:
            if w < 0:
                raise ValueError(f"privacy weight {w} must be >= 0")
        for m in self.mixes:
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"prototype mix {m} must be in [0, 1]")


def resolved_reid_scope(plan: AuditPlan) -> str:
    """``all`` where the cross-fitted models cannot differ but in their recognizers' picks
    (one model; or shared prototypes and an untrained network), else ``group``."""
    if plan.reid_scope != "auto":
        return plan.reid_scope
    if "learned" not in plan.methods or plan.anonymizer_folds == 1:
        return "all"
    return "all" if plan.shared_prototypes and plan.anonymizer.epochs == 0 else "group"


def run_audit(data: AuditData, plan: AuditPlan, config: AuditConfig | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Raw versus protected: the audit report (see :mod:`privacy.audit_cmd` for the file)."""
    cfg = config or AuditConfig()
    say = progress or (lambda msg: log.info("%s", msg))
    scope = resolved_reid_scope(plan)
    if "learned" in plan.methods and plan.anonymizer_folds > 1 and data.groups is None and scope == "group":
        # every setting is measured within the same groups, so rows stay comparable
        groups = anonymizer_groups(data, plan.anonymizer_folds, plan.anonymizer.seed)
        smallest = min(len(np.unique(data.subjects[groups == g])) for g in np.unique(groups))
        if smallest < 2:
            raise ValueError(f"re-identification within each anonymizer's group needs 2 or more subjects per "
                             f"group; {len(np.unique(data.subjects))} subjects in {plan.anonymizer_folds} "
                             f"anonymizer folds leave {smallest}: use fewer anonymizer folds or re-id scope all")
        data = replace(data, groups=groups)
    say("auditing raw data")
    raw = audit_arrays(data, cfg)
    say(_line("raw", raw))
    sweep: list[dict[str, Any]] = []
    by_method: dict[str, dict[str, Any]] = {}
    if "bones" in plan.methods:
        result = audit_arrays(data.with_x(normalize_bones(data.x, data.layout, plan.bones)), cfg)
        say(_line("bones", result))
        sweep.append({"method": "bones", "keep_ratio": 1.0, "mix": 0.0, "privacy_weight": 0.0, **result})
        by_method["bones"] = result
    if "learned" in plan.methods:
        weights = plan.privacy_weights
        if plan.anonymizer.epochs == 0 and len(weights) > 1:
            say("the anonymizer is not trained adversarially (epochs 0): privacy weights do not change it, "
                f"auditing weight {weights[0]:g} only")
            weights = weights[:1]
        for weight in weights:
            anon_cfg = replace(plan.anonymizer, privacy_weight=float(weight), mix=max(plan.mixes))
            protected = cross_fit_anonymize(data, anon_cfg, plan.keep_ratios, plan.anonymizer_folds,
                                            progress=say, mixes=plan.mixes,
                                            shared_prototypes=plan.shared_prototypes)
            for (keep, mix), xp in protected.items():
                result = audit_arrays(data.with_x(xp), cfg)
                setting = {"method": "learned", "keep_ratio": keep, "mix": mix, "privacy_weight": float(weight),
                           "anonymizer_epochs": plan.anonymizer.epochs}
                say(_line(_setting(setting), result))
                sweep.append({**setting, **result})
                by_method.setdefault("learned", result)
    primary = by_method.get("learned", by_method.get("bones"))
    return {
        "raw": raw,
        "protected": primary,
        "protected_by_method": by_method,
        "sweep": sweep,
        "plan": {
            "methods": list(plan.methods),
            "keep_ratios": list(plan.keep_ratios),
            "privacy_weights": list(plan.privacy_weights),
            "mixes": list(plan.mixes),
            "bones": plan.bones.to_dict(),
            "anonymizer": plan.anonymizer.to_dict(),
            "anonymizer_folds": plan.anonymizer_folds,
            "shared_prototypes": plan.shared_prototypes,
            "reid_scope": scope,
        },
        "audit_config": asdict(cfg),
    }


def _weight_label(s: dict[str, Any], sep: str = " ") -> str:
    """The privacy weight of a sweep entry, only where the anonymizer was trained
    adversarially (an untrained one is the same at every weight)."""
    return f"{sep}w={s['privacy_weight']:g}" if s.get("anonymizer_epochs", 1) > 0 else ""


def _setting(s: dict[str, Any]) -> str:
    """Row label of a learned-anonymizer setting."""
    return f"learned k={s['keep_ratio']:g} mix={s.get('mix', 0):g}" + _weight_label(s)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{100 * v:5.1f}"


def _line(name: str, r: dict[str, Any]) -> str:
    attrs = " ".join(f"{k}={_fmt(v)}" for k, v in r["attributes"].items())
    return (f"{name}: reid top1={_fmt(r['reid_top1'])} top5={_fmt(r['reid_top5'])} "
            f"linkage={_fmt(r['linkage_accuracy'])} action={_fmt(r['action_top1'])} {attrs} ({r['seconds']}s)")


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of raw, each protected setting and chance (percentages)."""
    attrs = sorted(report["raw"]["attributes"])
    head = ["setting", "reid@1", "reid@5", "linkage", "action@1", *attrs]
    rows = [["raw", *(_fmt(report["raw"][m]) for m in METRICS), *(_fmt(report["raw"]["attributes"][a]) for a in attrs)]]
    for s in report["sweep"]:
        name = "bones" if s["method"] == "bones" else _setting(s)
        rows.append([name, *(_fmt(s[m]) for m in METRICS), *(_fmt(s["attributes"].get(a)) for a in attrs)])
    chance = report["raw"]["chance"]
    rows.append(["chance", *(_fmt(chance[m]) for m in METRICS), *(_fmt(chance["attributes"].get(a)) for a in attrs)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_tradeoff(report: dict[str, Any], path: str) -> None:
    """Re-identification and action accuracy over keep ratio, prototype mix and privacy
    weight (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    raw = report["raw"]
    learned = [s for s in report["sweep"] if s["method"] == "learned"]
    for weight, mix in sorted({(s["privacy_weight"], s.get("mix", 0.0)) for s in learned}):
        pts = sorted((s for s in learned if (s["privacy_weight"], s.get("mix", 0.0)) == (weight, mix)),
                     key=lambda s: s["keep_ratio"])
        k = [s["keep_ratio"] for s in pts]
        tag = f"mix={mix:g}" + _weight_label(pts[0], sep=", ")
        line, = left.plot(k, [100 * s["action_top1"] for s in pts], "o-", label=f"action, {tag}")
        left.plot(k, [100 * s["reid_top1"] for s in pts], "s--", color=line.get_color(), label=f"re-id, {tag}")
    left.axhline(100 * raw["action_top1"], color="black", lw=1, label="raw action")
    left.axhline(100 * raw["reid_top1"], color="black", lw=1, ls="--", label="raw re-id")
    left.axhline(100 * raw["chance"]["reid_top1"], color="grey", lw=1, ls=":", label="re-id chance")
    for s in report["sweep"]:
        if s["method"] == "bones":
            left.axhline(100 * s["reid_top1"], color="tab:red", lw=1, ls="--", label="bones re-id")
            left.axhline(100 * s["action_top1"], color="tab:red", lw=1, label="bones action")
    left.set_xlabel("keep ratio (share of joint-time tokens kept)")
    left.set_ylabel("top-1 accuracy (%)")
    left.set_title("accuracy over keep ratio")
    left.legend(fontsize=7, loc="best")
    right.scatter([100 * raw["reid_top1"]], [100 * raw["action_top1"]], marker="*", s=120, color="black", label="raw")
    for i, s in enumerate(report["sweep"]):
        label = "bones" if s["method"] == "bones" else _setting(s)[len("learned "):]
        right.scatter([100 * s["reid_top1"]], [100 * s["action_top1"]], s=30)
        # settings often land close together: stagger their labels so they stay legible
        right.annotate(label, (100 * s["reid_top1"], 100 * s["action_top1"]), fontsize=7,
                       xytext=(4, 4 - 11 * (i % 3)), textcoords="offset points")
    right.axvline(100 * raw["chance"]["reid_top1"], color="grey", lw=1, ls=":")
    right.set_xlim(0, 100)
    right.set_ylim(0, 100)
    left.set_ylim(0, 100)
    left.set_xlim(0, 1.05)
    right.set_xlabel("re-identification top-1 (%)  (lower is more private)")
    right.set_ylabel("action top-1 (%)")
    right.set_title("privacy-utility trade-off")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
