"""MSR Action3D: one text file per sequence, ``aAA_sSS_eEE_skeleton3D.txt``.

Each line is one joint, ``x y z confidence`` (metres); 20 lines make a frame, in the MSR
joint order (:data:`~skeletons.layouts.MSR_ACTION3D`). Some frames are all zeros: they are
kept as they are, and preprocessing drops them (nothing is removed while reading). Frames
whose mean confidence is below ``min_confidence`` can be marked invalid (NaN) so that
preprocessing drops them too; by default none are, since the sensor reports confidence
0 for inferred centre joints in most frames. ``files_used_in_cvpr12_paper.txt`` beside the
files names the sequences of the standard protocol; each sample carries
``meta["in_cvpr12_protocol"]``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from skeletons.layouts import MSR_ACTION3D
from skeletons.read_common import (
    SkeletonFormatError,
    find_files,
    load_files,
    parse_name,
    parse_number_lines,
    read_text,
)
from skeletons.sample import SkeletonDataset, SkeletonSample

log = logging.getLogger(__name__)

CLASSES = [
    "high arm wave", "horizontal arm wave", "hammer", "hand catch", "forward punch",
    "high throw", "draw x", "draw tick", "draw circle", "hand clap", "two hand wave",
    "side-boxing", "bend", "forward kick", "side kick", "jogging", "tennis swing",
    "tennis serve", "golf swing", "pick up & throw",
]
PROTOCOL_LIST = "files_used_in_cvpr12_paper.txt"
_NAME = re.compile(r"a(\d+)_s(\d+)_e(\d+)_skeleton3D\.txt")
_V = MSR_ACTION3D.num_joints


def read_msr_file(
    path: str | Path,
    protocol: set[str] | None = None,
    min_confidence: float | None = None,
) -> SkeletonSample:
    """One MSR Action3D sequence as joints ``[T, 1, 20, 3]`` in the MSR layout.

    ``protocol`` is the set of sequence ids (``a01_s01_e01``) of the standard protocol;
    without it ``in_cvpr12_protocol`` is None (unknown).
    """
    path = Path(path)
    action, subject, execution = (int(g) for g in parse_name(
        path, _NAME, "aAA_sSS_eEE_skeleton3D.txt").groups())
    if not 1 <= action <= len(CLASSES):
        raise SkeletonFormatError(
            path, f"action a{action:02d} is outside a01..a{len(CLASSES)}", field="file name")
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
    if blank is not None:
        raise SkeletonFormatError(path, "empty line inside the data", line=blank + 1)
    if not lines:
        raise SkeletonFormatError(path, "no frames (empty file)", line=1)
    values = parse_number_lines(path, lines, 4)
    if len(values) % _V:
        raise SkeletonFormatError(
            path,
            f"{len(values)} joint lines is not a whole number of 20-joint frames "
            f"(last frame truncated after {len(values) % _V} joints)",
            line=len(values),
        )
    frames = values.reshape(-1, _V, 4)
    joints = frames[..., :3].copy()
    confidence = frames[..., 3]
    low = 0
    if min_confidence is not None:
        is_low = confidence.mean(axis=1) < min_confidence
        low = int(is_low.sum())
        joints[is_low] = np.nan
    seq_id = path.name[: -len("_skeleton3D.txt")]
    return SkeletonSample(
        joints=joints[:, None],
        label=action - 1,
        meta={
            "dataset": "msr-action3d",
            "subject": str(subject),
            "view": None,
            "source": str(path),
            "attributes": {},
            "action": f"a{action:02d}",
            "execution": execution,
            "in_cvpr12_protocol": None if protocol is None else seq_id in protocol,
            "zero_frames": int((frames[..., :3] == 0).all(axis=(1, 2)).sum()),
            "low_confidence_frames": low,
        },
    )


def read_protocol_list(path: str | Path) -> set[str]:
    """Sequence ids listed in ``files_used_in_cvpr12_paper.txt``."""
    path = Path(path)
    ids = set()
    for i, line in enumerate(read_text(path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if not re.fullmatch(r"a\d+_s\d+_e\d+", name):
            raise SkeletonFormatError(path, f"not a sequence id: {name!r}", line=i)
        ids.add(name)
    return ids


def load_msr_action3d(
    root: str | Path,
    on_error: str = "raise",
    cvpr12_only: bool = False,
    min_confidence: float | None = None,
) -> SkeletonDataset:
    """Every ``*_skeleton3D.txt`` under ``root``; ``cvpr12_only`` keeps the protocol's 557."""
    root = Path(root)
    list_path = root / PROTOCOL_LIST
    protocol = read_protocol_list(list_path) if list_path.is_file() else None
    if protocol is None:
        log.warning("msr-action3d: %s not found; in_cvpr12_protocol is unknown", list_path)
        if cvpr12_only:
            raise FileNotFoundError(f"msr-action3d: cvpr12_only needs {list_path}")
    paths = find_files(root, ["*_skeleton3D.txt"], "msr-action3d")
    if cvpr12_only:
        paths = [p for p in paths if p.name[: -len("_skeleton3D.txt")] in protocol]
    samples, skipped = load_files(
        paths, lambda p: read_msr_file(p, protocol, min_confidence), on_error, "msr-action3d")
    return SkeletonDataset("msr-action3d", MSR_ACTION3D, list(CLASSES), samples, skipped)
