"""Kinder-Gator: one CSV per trial under ``Adults/`` and ``Children/``.

Files are named ``POSE-p<participant>_<order>-<Motion-name>-<timestamp>.csv``. The order
number differs between participants (six counterbalanced sets), so the label comes from
the motion name, checked against the ``Action`` column. Columns are named
(``HipCenterX``, ..., ``FootRightZ``); they are found by name, so a file whose columns
come in another order still reads right. Demographics (sex, age, handedness) are parsed
from the data set's ``README.txt`` into ``meta["attributes"]`` with ``group`` child or
adult.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

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

log = logging.getLogger(__name__)

GROUPS = {"Adults": "adult", "Children": "child"}
_NAME = re.compile(r"POSE-p(\d+)_(\d+)-(.+)-(\d+)\.csv")
_PARTICIPANT_ROW = re.compile(r"(\d+)\s+([MF])\s+(\d+)\s+([RLB])\b")


def motion_name(raw: str) -> str:
    """Class name of a motion as written in file names (``Throw-a-ball-`` -> ``Throw-a-ball``)."""
    return raw.strip().strip("-")


def sdk_column(joint: str) -> str:
    """Column stem of a layout joint name in Kinect SDK spelling: ``hip_left`` -> ``HipLeft``."""
    return "".join(part.capitalize() for part in joint.split("_"))


def parse_demographics(path: str | Path) -> dict[str, dict[str, Any]]:
    """Participant id -> ``{sex, age, handedness, group}`` from Kinder-Gator's README.txt.

    The demographics table has a child and an adult per line, separated by ``||``:
    ``337  F  5  B  Pre-K  ||  565  F  19  R  High school``.
    """
    path = Path(path)
    people: dict[str, dict[str, Any]] = {}
    for line in read_text(path).splitlines():
        if "||" not in line:
            continue
        for side, group in zip(line.split("||")[:2], ("child", "adult")):
            match = _PARTICIPANT_ROW.match(side.strip())
            if match:
                pid, sex, age, hand = match.groups()
                people[pid] = {"sex": sex, "age": int(age), "handedness": hand, "group": group}
    if not people:
        raise SkeletonFormatError(path, "no demographics table (ID Sex Age Handedness) found")
    return people


def read_kindergator_file(
    path: str | Path, demographics: dict[str, dict[str, Any]] | None = None
) -> SkeletonSample:
    """One trial as joints ``[T, 1, 20, 3]`` (Kinect v1); ``label`` is -1 until the loader
    assigns class indices (the motion name is in ``meta["motion"]``)."""
    path = Path(path)
    participant, order, raw_motion, _ = parse_name(
        path, _NAME, "POSE-p<participant>_<order>-<Motion-name>-<timestamp>.csv").groups()
    motion = motion_name(raw_motion)
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise SkeletonFormatError(path, "no data rows after the header", line=len(lines) + 1)
    header = [h.strip() for h in lines[0].split(",")]
    columns = _joint_columns(path, header)
    action_col = _column(path, header, "Action")
    user_col = _column(path, header, "User-ID")
    rows = [line.split(",") for line in lines[1:]]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise SkeletonFormatError(
                path, f"{len(row)} columns, header has {len(header)}", line=i + 2)
    table = np.array(rows, dtype=object)
    try:
        joints = table[:, columns].astype(np.float32)
    except ValueError:
        joints = _find_bad_number(path, rows, columns, header)
    if np.isinf(joints).any():
        row, col = np.argwhere(np.isinf(joints))[0][:2]
        raise SkeletonFormatError(path, "infinite value", line=int(row) + 2,
                                  field=header[columns.reshape(-1)[col]])
    for col, expected, what in ((action_col, raw_motion, "motion"),
                                (user_col, participant, "participant")):
        values = table[:, col]
        bad = np.flatnonzero(np.char.strip(values.astype(str)) != expected)
        if len(bad):
            raise SkeletonFormatError(
                path, f"{values[bad[0]]!r} differs from the {what} {expected!r} in the file name",
                line=int(bad[0]) + 2, field=header[col])
    group = GROUPS.get(path.parent.name)
    attributes: dict[str, Any] = dict((demographics or {}).get(participant, {}))
    if group is not None:
        if attributes.get("group", group) != group:
            raise SkeletonFormatError(
                path, f"participant {participant} is listed as {attributes['group']} in README.txt"
                f" but the file is under {path.parent.name}/", field="file name")
        attributes["group"] = group
    return SkeletonSample(
        joints=joints.reshape(len(rows), 1, KINECT_V1.num_joints, 3),
        label=-1,
        meta={
            "dataset": "kinder-gator",
            "subject": participant,
            "view": None,
            "source": str(path),
            "attributes": attributes,
            "motion": motion,
            "order": int(order),
        },
    )


def _column(path: Path, header: list[str], name: str) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise SkeletonFormatError(path, "column missing from the header", line=1,
                                  field=name) from None


def _joint_columns(path: Path, header: list[str]) -> np.ndarray:
    """Column index of x, y, z for every Kinect v1 joint, ``[20, 3]``."""
    return np.array([
        [_column(path, header, sdk_column(joint) + axis) for axis in "XYZ"]
        for joint in KINECT_V1.joints
    ])


def _find_bad_number(path: Path, rows: list[list[str]], columns: np.ndarray,
                     header: list[str]) -> np.ndarray:
    for i, row in enumerate(rows):
        for col in columns.reshape(-1):
            try:
                float(row[col])
            except ValueError:
                raise SkeletonFormatError(path, f"not a number: {row[col]!r}", line=i + 2,
                                          field=header[col]) from None
    raise SkeletonFormatError(path, "numbers could not be read", line=2)


def load_kindergator(root: str | Path, on_error: str = "raise") -> SkeletonDataset:
    """Every trial under ``root/Adults`` and ``root/Children``; classes are the motion names
    found, sorted, so labels are the same whichever participants a folder holds."""
    root = Path(root)
    readme = root / "README.txt"
    demographics = parse_demographics(readme) if readme.is_file() else None
    if demographics is None:
        log.warning("kinder-gator: %s not found; attributes hold only the group", readme)
    paths = find_files(root, ["Adults/*.csv", "Children/*.csv"], "kinder-gator")
    samples, skipped = load_files(
        paths, lambda p: read_kindergator_file(p, demographics), on_error, "kinder-gator")
    classes = sorted({s.meta["motion"] for s in samples})
    index = {name: i for i, name in enumerate(classes)}
    for sample in samples:
        sample.label = index[sample.meta["motion"]]
    unknown = sorted({s.subject for s in samples} - set(demographics or {}))
    if demographics is not None and unknown:
        log.warning("kinder-gator: participants %s are not in README.txt", ", ".join(unknown))
    return SkeletonDataset("kinder-gator", KINECT_V1, classes, samples, skipped)
