"""``fedsar-sim datasets``: what skeleton data sets are under a data root, and what is in them.

Looks for nw-ucla, msr-action3d, kinder-gator and ntu folders under ``--data-root`` and
prints, for each, the sequences, classes, subjects, views, frames per sequence and the
files that could not be read, as a table or as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from skeletons.clikit import UserError
from skeletons.datasets import FOLDERS, find_datasets, load_dataset
from skeletons.sample import SkeletonDataset

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root", type=Path, default=os.environ.get("FEDSAR_DATA_ROOT"),
        help="folder holding nw-ucla/, msr-action3d/, kinder-gator/, ntu/ "
             "(default: $FEDSAR_DATA_ROOT)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-cache", action="store_true",
                        help="parse every file again instead of using the cache of parsed data")
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="skip unreadable files and list them (default), or stop at the first")


def summarize(dataset: SkeletonDataset, folder: Path) -> dict[str, Any]:
    """Counts a researcher checks before choosing a scenario."""
    frames = np.array([s.joints.shape[0] for s in dataset], dtype=np.int64)
    summary: dict[str, Any] = {
        "folder": str(folder),
        "layout": dataset.layout.name,
        "sequences": len(dataset),
        "classes": dataset.num_classes,
        "subjects": len(dataset.subjects),
        "views": len(dataset.views),
        "frames": {
            "min": int(frames.min()) if len(frames) else 0,
            "median": float(np.median(frames)) if len(frames) else 0.0,
            "max": int(frames.max()) if len(frames) else 0,
        },
        "skipped": len(dataset.skipped),
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
    }
    groups = sorted({str(s.attributes["group"]) for s in dataset if "group" in s.attributes})
    if groups:
        summary["subjects_by_group"] = {
            g: len({s.subject for s in dataset if s.attributes.get("group") == g}) for g in groups
        }
    protocol = [s.meta.get("in_cvpr12_protocol") for s in dataset]
    if any(p is not None for p in protocol):
        summary["in_cvpr12_protocol"] = sum(bool(p) for p in protocol)
    return summary


def run(args: argparse.Namespace) -> int:
    if args.data_root is None:
        raise UserError("--data-root is required (or set FEDSAR_DATA_ROOT)")
    root = Path(args.data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    found, missing = find_datasets(root)
    if not found:
        expected = "; ".join(f"{n}: {' or '.join(f)}" for n, f in FOLDERS.items())
        raise UserError(f"no data set folder under {root} (looked for {expected})")
    report: dict[str, Any] = {"data_root": str(root), "datasets": {}, "missing": missing}
    failed = False
    for name, folder in found.items():
        try:
            dataset = _load(name, folder, args)
        except (ValueError, OSError) as err:
            report["datasets"][name] = {"folder": str(folder), "error": str(err)}
            failed = True
            continue
        report["datasets"][name] = summarize(dataset, folder)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 1 if failed else 0


def _load(name: str, folder: Path, args: argparse.Namespace) -> SkeletonDataset:
    if args.no_cache:
        return load_dataset(name, folder, on_error=args.on_error)
    from skeletons.cache import cached_dataset

    return cached_dataset(name, folder, on_error=args.on_error)


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table, then the skipped files and errors."""
    head = ("dataset", "sequences", "classes", "subjects", "views",
            "frames min/median/max", "skipped")
    rows, notes = [head], []
    for name, s in report["datasets"].items():
        if "error" in s:
            rows.append((name, "error", "", "", "", "", ""))
            notes.append(f"{name}: {s['error']}")
            continue
        f = s["frames"]
        rows.append((name, str(s["sequences"]), str(s["classes"]), str(s["subjects"]),
                     str(s["views"]), f"{f['min']}/{f['median']:g}/{f['max']}", str(s["skipped"])))
        notes += [f"{name}: skipped {k['path']}: {k['reason']}" for k in s["skipped_files"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report["missing"]:
        lines.append(f"not found under {report['data_root']}: {', '.join(report['missing'])}")
    return "\n".join(lines + notes)
