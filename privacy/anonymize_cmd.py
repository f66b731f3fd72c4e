"""``fedsar-privacy anonymize``: write an anonymized copy of a data set as ``.npz``.

The data set is preprocessed (``--frames``), anonymized (``bones`` or a ``learned``
model, either given with ``--model`` or fitted here on the data set and saved with
``--fit-model``) and written in the ``.npz`` format documented in
:mod:`skeletons.read_npz` (readable with ``load_dataset("npz", FILE)``). Subject ids are
replaced by pseudonyms (consistent within the file) and attributes are left out unless
``--keep-subjects`` / ``--keep-attributes`` say otherwise: an anonymized export should
not carry the identities it hides.
"""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

import numpy as np

from privacy.anonymizer import (
    AnonymizationConfig,
    AnonymizerConfig,
    anonymize_arrays,
    load_anonymizer,
    model_paths,
    save_anonymizer,
)
from privacy.audit import fit_on_all
from privacy.audit_cmd import add_data_arguments, audit_data, bones_config, dataset_info, floats, load_prepared
from skeletons.clikit import UserError, free_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--method", choices=("bones", "learned"), default="bones")
    parser.add_argument("--keep-ratio", type=float, default=None,
                        help="share of joint-time tokens the learned anonymizer keeps (0 < k <= 1; default 1)")
    parser.add_argument("--mix", type=float, default=None,
                        help="share of the predicted action's prototype in the learned output (default: the model's)")
    parser.add_argument("--model", type=Path, default=None, help="a saved learned anonymizer (.json or .npz)")
    parser.add_argument("--fit-model", type=Path, default=None,
                        help="fit a learned anonymizer on this data set and save it here first")
    parser.add_argument("--privacy-weights", type=floats, default=(AnonymizerConfig.privacy_weight,),
                        help="privacy weight for --fit-model (first value)")
    parser.add_argument("--anonymizer-epochs", type=int, default=AnonymizerConfig.epochs,
                        help="epochs of adversarial training of the token scorer and displacement "
                             "(default 0: off; only the action recognizers and prototypes are fitted)")
    parser.add_argument("--keep-subjects", action="store_true", help="write real subject ids (default: pseudonyms)")
    parser.add_argument("--keep-attributes", action="store_true", help="write attributes such as sex and age")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 (default): the cores the load average leaves idle, at least one")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch

    from skeletons.read_npz import write_npz

    torch.set_num_threads(free_threads(args.threads))
    if args.out.suffix != ".npz":
        raise UserError(f"--out {args.out} must end in .npz")
    bones = bones_config(args)
    if args.method == "learned" and (args.model is None) == (args.fit_model is None):
        raise UserError("--method learned needs exactly one of --model or --fit-model")
    learned_only = [f"--{name.replace('_', '-')}" for name in ("keep_ratio", "mix", "model", "fit_model")
                    if getattr(args, name) is not None]
    if args.method == "bones" and learned_only:  # ignored by the bone normalizer, so refused rather than reported
        raise UserError(f"{', '.join(learned_only)}: options of --method learned, not of bones")
    keep_ratio = 1.0 if args.keep_ratio is None else args.keep_ratio
    prepared = load_prepared(args)
    info = dataset_info(prepared, args)
    data = audit_data(prepared, args.dataset)
    if args.method == "learned":
        if args.fit_model is not None:
            cfg = AnonymizerConfig(epochs=args.anonymizer_epochs, bones=bones, seed=args.seed,
                                   privacy_weight=args.privacy_weights[0])
            save_anonymizer(fit_on_all(data, cfg), args.fit_model, extra={"dataset": info})
            model_path = model_paths(args.fit_model)[1]
            print(f"fitted anonymizer saved to {model_path}")
        else:
            model_path = model_paths(args.model)[1]
            try:
                load_anonymizer(model_path)
            except (FileNotFoundError, ValueError) as err:
                raise UserError(str(err)) from None
        try:
            config = AnonymizationConfig(method="learned", keep_ratio=keep_ratio, model_path=str(model_path),
                                         mix=args.mix)
        except ValueError as err:
            raise UserError(str(err)) from None
    else:
        try:
            config = AnonymizationConfig(method="bones", layout=data.layout.name, bones=bones)
        except ValueError as err:
            raise UserError(str(err)) from None
    try:
        protected = anonymize_arrays(data.x, config, data.layout)
    except ValueError as err:
        raise UserError(str(err)) from None
    write_npz(export_dataset(protected, prepared, info["name"], args.keep_subjects, args.keep_attributes, args.seed),
              args.out)
    summary = {"out": str(args.out), "sequences": len(protected), "method": args.method,
               "keep_ratio": keep_ratio if args.method == "learned" else None, "pseudonymized": not args.keep_subjects,
               "attributes_kept": bool(args.keep_attributes)}
    print(json.dumps(summary))
    return 0


def export_dataset(protected: np.ndarray, prepared: Any, name: str, keep_subjects: bool,
                   keep_attributes: bool, seed: int = 0) -> Any:
    """A ``SkeletonDataset`` of the protected arrays with pseudonyms instead of subject ids."""
    from skeletons.layouts import get_layout
    from skeletons.sample import SkeletonDataset, SkeletonSample

    subjects = np.array([str(m.get("subject")) for m in prepared.meta])
    names = {s: s for s in set(subjects)} if keep_subjects else _pseudonyms(subjects, seed)
    samples = []
    for i, m in enumerate(prepared.meta):
        meta = {"dataset": name, "subject": names[subjects[i]], "view": m.get("view"),
                "source": f"anonymized:{name}:{i}"}
        if keep_attributes:
            meta["attributes"] = dict(m.get("attributes") or {})
        samples.append(SkeletonSample(protected[i].transpose(1, 3, 2, 0), int(prepared.y[i]), meta))
    return SkeletonDataset(f"{name}-anonymized", get_layout(prepared.layout), list(prepared.classes), samples)


def _pseudonyms(subjects: np.ndarray, seed: int) -> dict[str, str]:
    """Random, file-local names for subjects (the order of the real ids is not kept)."""
    uniq = sorted(set(subjects.tolist()))
    tags = [secrets.token_hex(4) for _ in uniq]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    return {s: f"p{order[i]:03d}-{tags[i]}" for i, s in enumerate(uniq)}
