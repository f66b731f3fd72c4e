"""How well the anonymizer's action recognizer knows people it never saw:
``python -m privacy.recognizer_bench``.

The learned anonymizer paints in the prototype of the action its recognizer predicts,
so the recognizer's top-1 on unseen participants caps the action accuracy of the
anonymized data. This trains exactly that recognizer (the parts, schedule and
canonical-body input of ``fit_anonymizer``) on one cross-fitting group of the audit
(``fedsar-privacy audit --anonymizer-folds 2``: the same subject split) and tests it on
the other, both ways, for each seed: the top-1 of the parts' averaged probabilities
(what the anonymizer uses) and of every part alone. Results: a table on stdout and,
with ``--out``, JSON.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from privacy.anonymizer import AnonymizerConfig, train_action_recognizer
from privacy.audit import AuditData, anonymizer_groups
from privacy.bone_normalize import normalize_bones
from skeletons.atomic import write_report

PART_NAMES = ("motion CNN", "statistics MLP", "feature MLP")


def unseen_top1(canonical: AuditData, train: np.ndarray, config: AnonymizerConfig, seed: int) -> dict[str, float]:
    """Train the recognizer on the sequences where ``train`` holds, test on the rest.

    ``canonical`` holds bone-normalized sequences, the input the anonymizer's recognizer sees.
    With ``config.teacher_ensemble`` > 1 every part name scores the average of its copies."""
    x_train, x_test = torch.from_numpy(canonical.x[train]), torch.from_numpy(canonical.x[~train])
    y_train, y_test = torch.from_numpy(canonical.actions[train]), torch.from_numpy(canonical.actions[~train])
    net = train_action_recognizer(canonical.layout, x_train, y_train, config,
                                  torch.Generator().manual_seed(seed), seed)
    net.eval()
    with torch.no_grad():
        probs = [F.softmax(part(x_test)[0], dim=1) for part in net]
    result = {"averaged": float((sum(probs).argmax(dim=1) == y_test).float().mean())}
    kinds = len(probs) // config.teacher_ensemble  # parts per recognizer, in PART_NAMES order
    for j, name in enumerate(PART_NAMES[:kinds]):
        result[name] = float((sum(probs[j::kinds]).argmax(dim=1) == y_test).float().mean())
    return result


def run_bench(data: AuditData, config: AnonymizerConfig, seeds: list[int], split_seed: int) -> dict[str, Any]:
    """Every seed, both directions of the two-group split; means per part."""
    groups = anonymizer_groups(data, 2, split_seed)
    canonical = data.with_x(normalize_bones(data.x, data.layout, config.bones))  # per sequence: once for all runs
    runs = []
    for seed in seeds:
        for group in (0, 1):
            started = time.perf_counter()
            top1 = unseen_top1(canonical, groups == group, config, seed)
            runs.append({"seed": seed, "trained_on_group": group, "top1": top1,
                         "seconds": time.perf_counter() - started})
            print(f"seed {seed}, trained on group {group}: averaged {100 * top1['averaged']:.1f}%  "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    keys = list(runs[0]["top1"])
    return {
        "mean_top1": {k: statistics.fmean(r["top1"][k] for r in runs) for k in keys},
        "runs": runs,
        "recognizer": {"epochs": config.action_teacher_epochs, "batch_size": config.teacher_batch_size,
                       "hidden": config.adversary_hidden, "features": config.teacher_features,
                       "ensemble": config.teacher_ensemble,
                       "lr": config.adversary_lr},
        "split_seed": split_seed,
        "subjects_per_group": [int(len(np.unique(data.subjects[groups == g]))) for g in (0, 1)],
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }


def main(argv: list[str] | None = None) -> int:
    from privacy.audit_cmd import add_data_arguments, audit_data, bones_config, load_prepared
    from skeletons.clikit import UserError

    parser = argparse.ArgumentParser(prog="python -m privacy.recognizer_bench", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--seeds", default="1,2", help="comma-separated recognizer seeds")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="the audit's --seed: which participants form each cross-fitting group")
    parser.add_argument("--epochs", type=int, default=AnonymizerConfig.action_teacher_epochs)
    parser.add_argument("--hidden", type=int, default=AnonymizerConfig.adversary_hidden)
    parser.add_argument("--no-features", dest="features", action="store_false",
                        help="leave out the feature MLP (the recognizer before teacher_features)")
    parser.add_argument("--ensemble", type=int, default=AnonymizerConfig.teacher_ensemble,
                        help="recognizers whose probabilities are averaged (1: a single one)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds or args.epochs < 1 or args.ensemble < 1:
        parser.error("--seeds needs at least one seed; --epochs and --ensemble must be >= 1")
    torch.set_num_threads(max(1, args.threads))
    config = replace(AnonymizerConfig(bones=bones_config(args)), action_teacher_epochs=args.epochs,
                     adversary_hidden=args.hidden, teacher_features=args.features, teacher_ensemble=args.ensemble)
    try:
        data = audit_data(load_prepared(args), args.dataset)
    except UserError as err:
        parser.error(str(err))
    if len(np.unique(data.subjects)) < 2:
        parser.error(f"data set {args.dataset!r} has fewer than two subjects: no unseen participants")
    report = run_bench(data, config, seeds, args.split_seed)
    report["dataset"] = args.dataset
    print(f"\n{args.dataset}: trained on {report['subjects_per_group']} participants per group, "
          f"tested on the other group; mean over {len(report['runs'])} runs")
    for name, value in report["mean_top1"].items():
        print(f"  {name:15s} {100 * value:5.1f}%")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
