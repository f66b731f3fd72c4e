"""``fedsar-privacy audit``: how much identity and attributes leak, raw versus protected.

Loads a data set (through the preprocessing cache), trains fresh attackers and an
independent action classifier on the raw arrays and on each protected version (bone
normalization, learned anonymizer swept over keep ratios, prototype shares and, when it
is trained adversarially, privacy weights), prints a table and writes ``DIR/audit.json``
and ``DIR/tradeoff.png``.

``audit.json``: ``raw`` and ``protected`` each hold ``reid_top1``, ``reid_top5``,
``linkage_accuracy``, ``action_top1`` and ``attributes`` (name -> accuracy), plus
``chance`` and per-attacker details; ``protected`` is the learned anonymizer at the first
keep ratio, mix and privacy weight (bone normalization when only ``bones`` is audited);
``protected_by_method``, ``sweep`` (every setting), ``plan``, ``audit_config`` and
``dataset`` describe the run; ``plan.reid_scope`` says whether re-identification and
linkage were measured among all subjects (``all``) or within each cross-fitted model's
group (``group``), which sets their chance level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from privacy.anonymizer import AnonymizerConfig, _atomic_write
from privacy.attackers import ATTACKER_KINDS
from privacy.audit import AuditConfig, AuditData, AuditPlan, format_table, plot_tradeoff, run_audit
from privacy.bone_normalize import BoneNormalizeConfig
from skeletons.clikit import UserError, free_threads

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ("sex", "group")


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. ``1,0.5,0.3``."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``fedsar-privacy anonymize``: which data, how preprocessed."""
    parser.add_argument("--dataset", required=True,
                        help="data set name: kinder-gator, nw-ucla, msr-action3d, ntu, npz, synthetic")
    parser.add_argument("--data-root", type=Path, default=os.environ.get("FEDSAR_DATA_ROOT"),
                        help="folder holding the data set folders (default: $FEDSAR_DATA_ROOT); "
                             "for npz, the .npz file or its folder")
    parser.add_argument("--frames", type=int, default=52, help="frames per sequence after resampling")
    parser.add_argument("--no-posture", dest="posture", action="store_false",
                        help="keep each person's habitual posture (by default it is mapped to the canonical rest pose)")
    parser.add_argument("--no-tempo", dest="tempo", action="store_false",
                        help="keep each recording's duration (by default valid frames are stretched)")
    parser.add_argument("--smooth", type=int, default=BoneNormalizeConfig.smooth,
                        help="moving-average window in frames against jitter (0: off)")
    parser.add_argument("--deadzone", type=float, default=BoneNormalizeConfig.deadzone,
                        help="drop bone-direction changes from the start pose smaller than this (0: off)")
    parser.add_argument("--root", choices=("scaled", "keep", "fixed"), default=BoneNormalizeConfig.root,
                        help="root trajectory after normalization: scaled to the canonical body, kept or removed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for audit.json and tradeoff.png")
    parser.add_argument("--method", choices=("bones", "learned", "both"), default="both",
                        help="protection to audit against raw (default both)")
    parser.add_argument("--keep-ratios", type=floats, default=(1.0, 0.5),
                        help="keep ratios of the learned anonymizer (first is the headline), e.g. 1,0.5,0.3")
    parser.add_argument("--privacy-weights", type=floats, default=(AnonymizerConfig.privacy_weight,),
                        help="privacy weights to train the learned anonymizer with, e.g. 0.5,1,2")
    parser.add_argument("--mixes", type=floats, default=(AnonymizerConfig.mix,),
                        help="shares of the predicted action's prototype in the learned output, e.g. 0,0.5,0.8")
    parser.add_argument("--attributes", type=names, default=None,
                        help="attributes to infer (default: sex and group where present)")
    parser.add_argument("--attackers", type=names, default=ATTACKER_KINDS,
                        help=f"attacker families (default {','.join(ATTACKER_KINDS)})")
    parser.add_argument("--epochs", type=int, default=AuditConfig.epochs, help="epochs per attacker")
    parser.add_argument("--folds", type=int, default=AuditConfig.folds,
                        help="subject-disjoint folds for attributes and action")
    parser.add_argument("--anonymizer-epochs", type=int, default=AnonymizerConfig.epochs,
                        help="epochs of adversarial training of the token scorer and displacement "
                             "(default 0: off; only the action recognizers and prototypes are fitted)")
    parser.add_argument("--recognizers", type=int, default=AnonymizerConfig.teacher_ensemble,
                        help="action recognizers the learned anonymizer averages to choose the prototype")
    parser.add_argument("--anonymizer-folds", type=int, default=AuditPlan.anonymizer_folds,
                        help="cross-fitting folds over subjects for the learned anonymizer (1: fit on all)")
    parser.add_argument("--prototypes", choices=("all", "fold"), default="all",
                        help="cross-fitted anonymizers paint prototypes averaged over all subjects, as a site's one "
                             "model does over its own people (default), or over their training subjects only; "
                             "recognizer and network are cross-fitted either way")
    parser.add_argument("--reid-scope", choices=("auto", "group", "all"), default="auto",
                        help="re-identify among all subjects or within each cross-fitted model's subjects; auto: "
                             "all unless the models could differ by more than their recognizers' picks")
    parser.add_argument("--action-weight", type=float, default=AnonymizerConfig.action_weight)
    parser.add_argument("--attribute-weight", type=float, default=AnonymizerConfig.attribute_weight)
    parser.add_argument("--reconstruction-weight", type=float, default=AnonymizerConfig.reconstruction_weight)
    parser.add_argument("--smoothness-weight", type=float, default=AnonymizerConfig.smoothness_weight)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 (default): the cores the load average leaves idle, at least one")
    parser.add_argument("--seed", type=int, default=0)


def bones_config(args: argparse.Namespace) -> BoneNormalizeConfig:
    try:
        return BoneNormalizeConfig(posture=args.posture, tempo=args.tempo, smooth=args.smooth, root=args.root,
                                   deadzone=args.deadzone)
    except ValueError as err:
        raise UserError(str(err)) from None


def load_prepared(args: argparse.Namespace) -> Any:
    """``skeletons.cache.Prepared`` arrays and metadata of ``--dataset``."""
    from skeletons.cache import prepare
    from skeletons.datasets import dataset_folder
    from skeletons.preprocess import PreprocessConfig

    name = args.dataset
    try:
        config = PreprocessConfig(num_frames=args.frames)
        if name == "synthetic":
            prepared = prepare(name, None, config)
        else:
            if args.data_root is None:
                raise UserError("--data-root is required (or set FEDSAR_DATA_ROOT)")
            root = Path(args.data_root)
            folder = root if name == "npz" else dataset_folder(root, name)
            prepared = prepare(name, folder, config, on_error="skip")
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    if len(prepared.x) == 0:
        raise UserError(f"data set {name!r} has no sequences")
    return prepared


def audit_data(prepared: Any, name: str, attributes: tuple[str, ...] | None = None) -> AuditData:
    """Arrays, labels, subjects and the wanted attributes (default: sex and group where present)."""
    from skeletons.layouts import get_layout

    meta = prepared.meta
    present = sorted({k for m in meta for k in (m.get("attributes") or {})})
    wanted = attributes if attributes is not None else tuple(a for a in DEFAULT_ATTRIBUTES if a in present)
    missing = [a for a in wanted if a not in present]
    if missing:
        raise UserError(f"data set {name!r} has no attribute {', '.join(missing)}; present: {', '.join(present) or 'none'}")
    attrs = {a: np.array([str((m.get("attributes") or {}).get(a, "")) for m in meta]) for a in wanted}
    return AuditData(prepared.x, prepared.y, np.array([str(m.get("subject")) for m in meta]),
                     get_layout(prepared.layout), attrs)


def dataset_info(prepared: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {"name": args.dataset, "sequences": int(len(prepared.x)), "classes": len(prepared.classes),
            "subjects": len({str(m.get("subject")) for m in prepared.meta}), "layout": prepared.layout,
            "frames": args.frames, "skipped": len(prepared.skipped)}


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(free_threads(args.threads))
    bones = bones_config(args)
    try:
        anon = AnonymizerConfig(
            epochs=args.anonymizer_epochs, bones=bones, seed=args.seed, action_weight=args.action_weight,
            attribute_weight=args.attribute_weight, reconstruction_weight=args.reconstruction_weight,
            smoothness_weight=args.smoothness_weight, teacher_ensemble=args.recognizers,
        )
        plan = AuditPlan(
            methods=("bones", "learned") if args.method == "both" else (args.method,),
            keep_ratios=args.keep_ratios, privacy_weights=args.privacy_weights, mixes=args.mixes, bones=bones,
            anonymizer=replace(anon, privacy_weight=args.privacy_weights[0]),
            anonymizer_folds=args.anonymizer_folds, shared_prototypes=args.prototypes == "all",
            reid_scope=args.reid_scope,
        )
        cfg = AuditConfig(attackers=args.attackers, epochs=args.epochs, folds=args.folds, seed=args.seed)
    except ValueError as err:
        raise UserError(str(err)) from None
    prepared = load_prepared(args)
    data, info = audit_data(prepared, args.dataset, args.attributes), dataset_info(prepared, args)
    if len(set(data.subjects)) < 2:
        raise UserError(f"data set {args.dataset!r} has fewer than two subjects: nothing to re-identify")
    print(f"{info['name']}: {info['sequences']} sequences, {info['subjects']} subjects, "
          f"{info['classes']} classes, attributes {', '.join(data.attributes) or 'none'}", flush=True)
    try:
        report = run_audit(data, plan, cfg, progress=lambda msg: print(msg, flush=True))
    except ValueError as err:  # a plan this data set cannot carry (e.g. too few subjects per fold)
        raise UserError(str(err)) from None
    report["dataset"] = info
    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = args.out / "tradeoff.png"
    plot_tradeoff(report, str(plot_path))
    report["plot"] = plot_path.name
    _atomic_write(args.out / "audit.json", (json.dumps(report, indent=2) + "\n").encode())
    print()
    print(format_table(report))
    print(f"\nwrote {args.out / 'audit.json'} and {plot_path}")
    return 0
