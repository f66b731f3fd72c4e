"""UESTC RGB-D Varying-view action database (Kinect v2, 25 joints, 40 aerobic actions).

Documented by the data set (its readme):

- names ``aA_dD_pPPP_cC`` + ``_skeleton.txt`` (raw text) or ``_skeleton.mat``: action
  ``A`` 0-39, view direction ``D`` 1-7 fixed and 8 the varying (round) view, person
  ``PPP`` 001-118, camera ``C`` 1 (front) or 2 (side / varying);
- raw text: each frame starts with a line ``#`` followed by 75 lines, three per joint in
  the Kinect v2 joint order: the camera-space point ``x y z 0`` (metres), the colour
  image point ``u v 1`` and the depth image point ``u v 2`` (pixels);
- ``.mat``: variable ``skel`` of shape ``[T, 25, 3]`` (camera space), read when scipy is
  installed;
- front-camera files of directions 5, 6 and 7 are copies of directions 3, 2 and 1.

Assumed beyond that, for exports of the same data: a frame of 25 lines (``x y z`` or
``x y z t`` with ``t`` a tracking state or tag, ignored) after each ``#``; or, without
``#`` markers, either one line of 75 (or 100 = 25 x 4) numbers per frame or 25 lines of
3 (or 4) numbers per frame. Numbers may be separated by spaces, tabs or commas. A frame
marker with no joints (no body tracked) becomes a frame of NaN. Anything else (a frame
of another size, a wrong tag, a non-number, an infinite value) is refused with the
line number.

Meta: ``subject`` is the person number, ``view`` is ``front`` for camera 1 and ``dD``
for camera 2, plus ``action``, ``direction``, ``camera`` and ``front_copy``.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from skeletons.layouts import NTU25
from skeletons.read_common import SkeletonFormatError, check_on_error, read_text
from skeletons.sample import SkeletonDataset, SkeletonSample, SkippedFile

log = logging.getLogger(__name__)

UESTC_NUM_CLASSES = 40
# The data set's appendix holds the action names; files name actions by number only.
UESTC_CLASSES: tuple[str, ...] = tuple(f"a{i}" for i in range(UESTC_NUM_CLASSES))
FRONT_COPY_DIRECTIONS = frozenset({5, 6, 7})

_V = NTU25.num_joints
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NAME = re.compile(r"a(\d+)_d(\d+)_p(\d+)_c(\d+)(?:_skeleton)?\.(txt|mat)", re.IGNORECASE)


def parse_uestc_name(path: str | Path) -> dict[str, int]:
    """``action``, ``direction``, ``person`` and ``camera`` from a UESTC file name."""
    path = Path(path)
    match = _NAME.fullmatch(path.name)
    if match is None:
        raise SkeletonFormatError(path, "file name does not follow aA_dD_pPPP_cC_skeleton.txt",
                                  field="file name")
    action, direction, person, camera = (int(g) for g in match.groups()[:4])
    if not 0 <= action < UESTC_NUM_CLASSES:
        raise SkeletonFormatError(path, f"action a{action} is outside a0-a39", field="file name")
    if not 1 <= direction <= 8:
        raise SkeletonFormatError(path, f"direction d{direction} is outside d1-d8",
                                  field="file name")
    if camera not in (1, 2):
        raise SkeletonFormatError(path, f"camera c{camera} is not c1 or c2", field="file name")
    return {"action": action, "direction": direction, "person": person, "camera": camera}


def _numbers(path: Path, number: int, tokens: list[str]) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise SkeletonFormatError(path, f"{bad!r} is not a number", line=number) from None
    if any(abs(v) > _FLOAT32_MAX for v in values):  # inf, or a value float32 turns into inf
        raise SkeletonFormatError(path, "infinite or too large value", line=number)
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


Line = tuple[int, list[str]]  # (1-based line number, tokens)


def _tagged(path: Path, line: Line, widths: tuple[int, int], tag: int, what: str) -> list[float]:
    """A line of ``widths[0]`` numbers, or ``widths[1]`` whose last one is ``tag``."""
    number, tokens = line
    values = _numbers(path, number, tokens)
    if len(values) == widths[1] and values[-1] != tag:
        raise SkeletonFormatError(
            path, f"{what} line should end with tag {tag}, found {tokens[-1]!r}", line=number)
    if len(values) not in widths:
        raise SkeletonFormatError(
            path, f"{what} line has {len(values)} numbers, expected {widths[0]} or {widths[1]}",
            line=number)
    return values


def _frame(path: Path, marker: int, lines: list[Line]) -> np.ndarray:
    """One ``#`` frame as ``[25, 3]``: 75 lines (camera/colour/depth per joint) or 25."""
    if not lines:
        return np.full((_V, 3), np.nan, dtype=np.float32)
    if len(lines) == 3 * _V:
        joints = []
        for j in range(_V):
            camera = _tagged(path, lines[3 * j], (3, 4), 0, "camera-space")
            _tagged(path, lines[3 * j + 1], (2, 3), 1, "colour-point")
            _tagged(path, lines[3 * j + 2], (2, 3), 2, "depth-point")
            joints.append(camera[:3])
        return np.asarray(joints, dtype=np.float32)
    if len(lines) == _V:
        joints = []
        for number, tokens in lines:
            if len(tokens) not in (3, 4):
                raise SkeletonFormatError(
                    path, f"joint line has {len(tokens)} numbers, expected 3 or 4", line=number)
            joints.append(_numbers(path, number, tokens)[:3])
        return np.asarray(joints, dtype=np.float32)
    raise SkeletonFormatError(
        path, f"frame has {len(lines)} joint lines, expected {3 * _V} (camera, colour and depth "
        f"point per joint) or {_V}; the file may be truncated or damaged", line=marker)


def _raw_fast(text: str) -> np.ndarray | None:
    """The documented layout in bulk: per frame ``#`` and 25 x (``x y z 0``, ``u v 1``,
    ``u v 2``). Returns ``None`` on any deviation, so that the line-by-line reader
    names the problem."""
    frames = text.count("#")
    per_frame = 3 * _V + 1
    if not frames or sum(1 for line in text.splitlines() if line.strip()) != frames * per_frame:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns, or raises, at a non-number
            values = np.fromstring(text.replace("#", " ").replace(",", " "), sep=" ")
    except (ValueError, DeprecationWarning):
        return None
    if values.size != frames * _V * 10:
        return None
    values = values.reshape(frames, _V, 10)
    tags = values[:, :, [3, 6, 9]]
    if (tags != (0.0, 1.0, 2.0)).any() or (np.abs(values) > _FLOAT32_MAX).any():
        return None
    return values[:, :, :3].astype(np.float32)


def _unframed(path: Path, lines: list[Line]) -> np.ndarray:
    """Without ``#`` markers: one frame per line (75/100 numbers) or 25 lines per frame."""
    first = len(lines[0][1])
    if first in (3 * _V, 4 * _V):
        rows = []
        for number, tokens in lines:
            if len(tokens) != first:
                raise SkeletonFormatError(
                    path, f"frame line has {len(tokens)} numbers, the first had {first}",
                    line=number)
            rows.append(_numbers(path, number, tokens))
        per_joint = first // _V
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), _V, per_joint)[:, :, :3]
    if first in (3, 4):
        for number, tokens in lines:
            if len(tokens) not in (3, 4):
                raise SkeletonFormatError(
                    path, f"joint line has {len(tokens)} numbers, expected 3 or 4", line=number)
        if len(lines) % _V:
            raise SkeletonFormatError(
                path, f"{len(lines)} joint lines is not a whole number of {_V}-joint frames "
                "(truncated?)", line=lines[-1][0])
        joints = [_numbers(path, number, tokens)[:3] for number, tokens in lines]
        return np.asarray(joints, dtype=np.float32).reshape(-1, _V, 3)
    raise SkeletonFormatError(
        path, f"line has {first} numbers; expected '#' frame markers, {3 * _V} or {4 * _V} "
        "numbers per frame line, or 3-4 numbers per joint line", line=lines[0][0])


def read_uestc_text(path: str | Path) -> np.ndarray:
    """A UESTC skeleton text file as float32 ``[T, 1, 25, 3]``."""
    path = Path(path)
    text = read_text(path)
    fast = _raw_fast(text)
    if fast is not None:
        return fast[:, None]
    lines: list[Line] = [
        (n, tokens) for n, line in enumerate(text.splitlines(), 1)
        if (tokens := line.replace(",", " ").split())
    ]
    if not lines:
        raise SkeletonFormatError(path, "no frames (the file is empty)")
    markers = [i for i, (_, tokens) in enumerate(lines) if tokens[0].startswith("#")]
    if not markers:
        frames = _unframed(path, lines)
    else:
        if markers[0] != 0:
            raise SkeletonFormatError(path, "content before the first '#' frame marker",
                                      line=lines[0][0])
        bounds = markers + [len(lines)]
        frames = np.stack([
            _frame(path, lines[start][0], lines[start + 1:end])
            for start, end in zip(bounds[:-1], bounds[1:])
        ])
        if np.isnan(frames).all():
            raise SkeletonFormatError(path, "every frame is empty (no body was tracked)")
    return frames[:, None]


def read_uestc_mat(path: str | Path) -> np.ndarray:
    """A ``_skeleton.mat`` file (variable ``skel``, ``[T, 25, 3]``) as ``[T, 1, 25, 3]``."""
    path = Path(path)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise SkeletonFormatError(path, "reading .mat files needs scipy (pip install scipy)") \
            from None
    try:
        content = loadmat(str(path))
    except Exception as err:  # scipy raises many types for damaged files
        raise SkeletonFormatError(path, f"not a readable .mat file: {err}") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__")}
    key = "skel" if "skel" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
    if key is None:
        raise SkeletonFormatError(path, f"no 'skel' variable (found {', '.join(arrays) or 'none'})",
                                  field="skel")
    skel = np.asarray(arrays[key])
    if skel.dtype.kind not in "fiu":
        raise SkeletonFormatError(path, f"has dtype {skel.dtype}, expected numbers", field=key)
    if skel.ndim == 2 and skel.shape[1] == 3 * _V:
        skel = skel.reshape(len(skel), _V, 3)
    if skel.ndim != 3 or skel.shape[1:] != (_V, 3) or len(skel) == 0:
        raise SkeletonFormatError(path, f"has shape {list(skel.shape)}, expected [T>0, 25, 3]",
                                  field=key)
    skel = skel.astype(np.float32)
    if np.isinf(skel).any():
        raise SkeletonFormatError(path, "contains an infinite value", field=key)
    return skel[:, None]


def read_uestc_file(path: str | Path) -> SkeletonSample:
    """One UESTC sequence (``.txt`` or ``.mat``) as a one-person sample in NTU25."""
    path = Path(path)
    ids = parse_uestc_name(path)
    joints = read_uestc_mat(path) if path.suffix.lower() == ".mat" else read_uestc_text(path)
    meta: dict[str, Any] = {
        "dataset": "uestc",
        "subject": str(ids["person"]),
        "view": "front" if ids["camera"] == 1 else f"d{ids['direction']}",
        "source": str(path),
        "attributes": {},
        "action": ids["action"],
        "direction": ids["direction"],
        "camera": ids["camera"],
        "front_copy": ids["camera"] == 1 and ids["direction"] in FRONT_COPY_DIRECTIONS,
        "empty_frames": int(np.isnan(joints).all(axis=(1, 2, 3)).sum()),
    }
    return SkeletonSample(joints=joints, label=ids["action"], meta=meta)


def load_uestc(root: str | Path, *, front_copies: str = "keep", on_error: str = "raise"
               ) -> SkeletonDataset:
    """Every UESTC skeleton file under ``root`` (searched recursively).

    When a sequence is present both as ``.txt`` and ``.mat`` the raw text is read.
    ``front_copies="drop"`` leaves out the front-camera copies (directions 5-7 of
    camera 1), which repeat directions 3, 2 and 1; the count is logged.
    """
    check_on_error(on_error)
    if front_copies not in ("keep", "drop"):
        raise ValueError(f"front_copies must be 'keep' or 'drop', not {front_copies!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"uestc: folder {root} does not exist")
    chosen: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _NAME.fullmatch(p.name)):
        key = path.name.lower().rsplit(".", 1)[0].removesuffix("_skeleton")
        if key not in chosen or path.suffix.lower() == ".txt":
            chosen[key] = path
    if not chosen:
        raise FileNotFoundError(f"uestc: no aA_dD_pPPP_cC_skeleton.txt/.mat files under {root}")
    samples: list[SkeletonSample] = []
    skipped: list[SkippedFile] = []
    dropped = 0
    for path in chosen.values():
        try:
            sample = read_uestc_file(path)
        except (SkeletonFormatError, OSError) as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(str(path), str(err)))
            continue
        if front_copies == "drop" and sample.meta["front_copy"]:
            dropped += 1
            continue
        samples.append(sample)
    if dropped:
        log.info("uestc: left out %d front-camera copies (directions 5-7 of c1)", dropped)
    if skipped:
        log.warning("uestc: skipped %d file(s): %s", len(skipped),
                    "; ".join(s.reason for s in skipped))
    return SkeletonDataset("uestc", NTU25, list(UESTC_CLASSES), samples, skipped)
