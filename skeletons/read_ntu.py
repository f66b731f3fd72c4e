"""NTU RGB+D (60 and 120) ``.skeleton`` text files, Kinect v2 with 25 joints.

Layout of a file: line 1 the frame count; per frame a body count; per body one line
``bodyID clippedEdges handLeftConfidence handLeftState handRightConfidence handRightState
isRestricted leanX leanY trackingState``, the joint count (25), then 25 lines
``x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState``.
Only the camera-space ``x y z`` are kept.

The name ``SsssCcccPpppRrrrAaaa`` gives setup, camera (the view), performer (the
subject), replication and action; the label is ``action - 1`` over 60 classes, or 120
when an action above 60 is present (NTU RGB+D 120). Bodies are matched across frames by
their ``bodyID`` and ordered most-tracked first, so preprocessing that keeps the first
persons keeps the actors rather than short-lived noise detections. A frame without a body
is all zeros (preprocessing drops it); a file without any body is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from skeletons.layouts import NTU25
from skeletons.read_common import (
    SkeletonFormatError,
    find_files,
    load_files,
    parse_name,
    parse_number_lines,
    read_text,
)
from skeletons.sample import SkeletonDataset, SkeletonSample

_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})\.skeleton")
_V = NTU25.num_joints
_BODY_FIELDS = 10
_JOINT_FIELDS = 12


def ntu_classes(num_classes: int) -> list[str]:
    """Class names ``A001``... for NTU RGB+D 60 or 120."""
    return [f"A{a:03d}" for a in range(1, num_classes + 1)]


class _Lines:
    """Walks a file's lines, naming the file and line in every error."""

    def __init__(self, path: Path, lines: list[str]):
        self.path, self.lines, self.pos = path, lines, 0

    def next(self, what: str) -> str:
        if self.pos >= len(self.lines):
            raise SkeletonFormatError(
                self.path, f"file ends early: expected {what}", line=self.pos + 1)
        self.pos += 1
        return self.lines[self.pos - 1]

    def count(self, what: str, low: int = 0) -> int:
        text = self.next(what).strip()
        try:
            value = int(text)
        except ValueError:
            raise SkeletonFormatError(
                self.path, f"{what} is not an integer: {text!r}", line=self.pos) from None
        if value < low:
            raise SkeletonFormatError(self.path, f"{what} is {value}, below {low}", line=self.pos)
        return value

    def block(self, n: int, width: int, what: str) -> np.ndarray:
        if self.pos + n > len(self.lines):
            raise SkeletonFormatError(
                self.path,
                f"file ends early: expected {n} {what} lines, found {len(self.lines) - self.pos}",
                line=len(self.lines) + 1)
        values = parse_number_lines(self.path, self.lines[self.pos:self.pos + n], width,
                                    first_line=self.pos + 1)
        self.pos += n
        return values


def read_ntu_file(path: str | Path) -> SkeletonSample:
    """One NTU sequence as joints ``[T, M, 25, 3]`` (M = distinct bodies, most-tracked first)."""
    path = Path(path)
    setup, camera, performer, replication, action = (int(g) for g in parse_name(
        path, _NAME, "SsssCcccPpppRrrrAaaa.skeleton").groups())
    if not 1 <= action <= 120:
        raise SkeletonFormatError(
            path, f"action A{action:03d} is outside A001..A120", field="file name")
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    reader = _Lines(path, lines)
    num_frames = reader.count("the frame count", low=1)
    tracks: dict[str, list[tuple[int, np.ndarray]]] = {}
    for t in range(num_frames):
        num_bodies = reader.count(f"the body count of frame {t + 1}")
        for _ in range(num_bodies):
            info = reader.next(f"a body line in frame {t + 1}").split()
            if len(info) != _BODY_FIELDS:
                raise SkeletonFormatError(
                    path, f"body line has {len(info)} values, expected {_BODY_FIELDS}",
                    line=reader.pos)
            joint_count = reader.count(f"the joint count in frame {t + 1}")
            if joint_count != _V:
                raise SkeletonFormatError(
                    path, f"joint count is {joint_count}, NTU has {_V}", line=reader.pos)
            values = reader.block(_V, _JOINT_FIELDS, "joint")
            tracks.setdefault(info[0], []).append((t, values[:, :3]))
    if reader.pos < len(lines):
        raise SkeletonFormatError(
            path, f"unexpected text after the last of {num_frames} frames", line=reader.pos + 1)
    if not tracks:
        raise SkeletonFormatError(path, f"no body tracked in any of its {num_frames} frames")
    joints = np.zeros((num_frames, len(tracks), _V, 3), dtype=np.float32)
    for m, frames in enumerate(_by_importance(tracks)):
        for t, xyz in frames:
            joints[t, m] = xyz
    return SkeletonSample(
        joints=joints,
        label=action - 1,
        meta={
            "dataset": "ntu",
            "subject": str(performer),
            "view": str(camera),
            "source": str(path),
            "attributes": {},
            "setup": setup,
            "replication": replication,
            "action": f"A{action:03d}",
        },
    )


def _by_importance(tracks: dict[str, list[tuple[int, np.ndarray]]]) -> list[list]:
    """Body tracks ordered by frames tracked, then by how much they move (noise is still)."""
    def key(item: tuple[int, list[tuple[int, np.ndarray]]]) -> tuple[int, float, int]:
        order, frames = item
        xyz = np.stack([f[1] for f in frames])
        return (-len(frames), -float(xyz.var(axis=0).sum()), order)
    ranked = sorted(enumerate(tracks.values()), key=key)
    return [frames for _, frames in ranked]


def load_ntu(root: str | Path, on_error: str = "raise") -> SkeletonDataset:
    """Every ``*.skeleton`` under ``root`` (searched recursively)."""
    paths = find_files(Path(root), ["**/*.skeleton"], "ntu")
    samples, skipped = load_files(paths, read_ntu_file, on_error, "ntu")
    top = max((s.label for s in samples), default=0) + 1
    return SkeletonDataset("ntu", NTU25, ntu_classes(60 if top <= 60 else 120), samples, skipped)
