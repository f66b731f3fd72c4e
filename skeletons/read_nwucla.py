"""Northwestern-UCLA Multiview Action 3D: one JSON file per sequence.

File ``aAA_sSS_eEE_vVV.json`` (action, subject, execution, view) holds
``{"file_name": ..., "skeletons": [[[x, y, z] x 20] x T], "label": k}`` in the Kinect v1
SDK joint order. The class index comes from the action id in the file name, over the ten
actions the data set has (a07 and a10 do not exist), so labels do not depend on which
files a folder happens to hold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from skeletons.layouts import KINECT_V1
from skeletons.read_common import (
    SkeletonFormatError,
    find_files,
    load_files,
    parse_name,
    read_text,
)
from skeletons.sample import SkeletonDataset, SkeletonSample

ACTIONS: dict[int, str] = {
    1: "pick up with one hand",
    2: "pick up with two hands",
    3: "drop trash",
    4: "walk around",
    5: "sit down",
    6: "stand up",
    8: "donning",
    9: "doffing",
    11: "throw",
    12: "carry",
}
CLASSES = list(ACTIONS.values())
_INDEX = {action: i for i, action in enumerate(ACTIONS)}
_NAME = re.compile(r"a(\d+)_s(\d+)_e(\d+)_v(\d+)\.json")


def read_nwucla_file(path: str | Path) -> SkeletonSample:
    """One NW-UCLA sequence as a sample with joints ``[T, 1, 20, 3]`` (Kinect v1)."""
    path = Path(path)
    action, subject, execution, view = (int(g) for g in parse_name(
        path, _NAME, "aAA_sSS_eEE_vVV.json").groups())
    if action not in _INDEX:
        raise SkeletonFormatError(
            path, f"unknown action a{action:02d}; NW-UCLA has "
            + ", ".join(f"a{a:02d}" for a in ACTIONS), field="file name")
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise SkeletonFormatError(path, f"invalid JSON: {err.msg}", line=err.lineno) from None
    if not isinstance(doc, dict) or "skeletons" not in doc:
        raise SkeletonFormatError(path, "missing", field="skeletons")
    try:
        joints = np.asarray(doc["skeletons"], dtype=np.float32)
    except (ValueError, TypeError):
        raise SkeletonFormatError(
            path, "not a [T][20][3] array of numbers (ragged or non-numeric)", field="skeletons"
        ) from None
    if joints.ndim != 3 or joints.shape[1:] != (KINECT_V1.num_joints, 3) or len(joints) == 0:
        raise SkeletonFormatError(
            path, f"expected shape [T>0, 20, 3], found {list(joints.shape)}", field="skeletons"
        )
    if np.isinf(joints).any():
        raise SkeletonFormatError(path, "contains an infinite value", field="skeletons")
    label = _INDEX[action]
    if "label" in doc and doc["label"] != label + 1:
        raise SkeletonFormatError(
            path, f"is {doc['label']!r} but action a{action:02d} is class {label + 1}",
            field="label")
    return SkeletonSample(
        joints=joints[:, None],
        label=label,
        meta={
            "dataset": "nw-ucla",
            "subject": str(subject),
            "view": str(view),
            "source": str(path),
            "attributes": {},
            "action": f"a{action:02d}",
            "execution": execution,
        },
    )


def load_nwucla(root: str | Path, on_error: str = "raise") -> SkeletonDataset:
    """Every ``*.json`` sequence under ``root`` (or ``root/all_sqe``)."""
    root = Path(root)
    folder = root / "all_sqe" if (root / "all_sqe").is_dir() else root
    paths = find_files(folder, ["*.json"], "nw-ucla")
    samples, skipped = load_files(paths, read_nwucla_file, on_error, "nw-ucla")
    return SkeletonDataset("nw-ucla", KINECT_V1, list(CLASSES), samples, skipped)
