"""PKU-MMD (Parts I and II): long Kinect v2 recordings cut into one sample per action.

Files (one pair per recording and camera, ``0002-L`` in Part I, ``A01N02-L`` in Part
II; ``L``/``M``/``R`` is the view; extension ``.txt``, or ``.skeleton``/``.label``):

- skeleton file: one line per frame of 150 numbers, two bodies x 25 joints x (x, y, z)
  in the NTU joint order; the second body is all zeros when only one person is present.
- label file: one line per action instance, ``action_id, start_frame, end_frame,
  confidence`` (ids 1-based; confidence 1 = slight, 2 = strong).
- optional split lists ``cross-subject.txt`` and ``cross-view.txt``: a ``Training
  videos:`` section and a ``Validation videos:`` (spelled "Validataion" in the
  official file) section of comma-separated recording names.

Assumptions, because the data set does not document them:
- frame numbers are 0-based and ``end_frame`` is exclusive: the instance is frames
  ``start:end`` of the skeleton file;
- recordings in the "Validation" section are the test set of that protocol;
- Part I names carry no subject id, so ``subject`` is the recording id (``"0002"``, all
  three views of one recording share it; meta ``subject_is_proxy`` is True) unless a
  ``subjects`` map is given; Part II names ``AxxNyy`` are read as subject ``yy`` (13
  ids for 13 performers, and the official cross-subject list holds out whole ``N``
  groups);
- Part II class names are not published with the files: they are ``action 1`` ... ``action
  41`` unless ``classes`` is given. If your Part II label files use Part I ids (up to 51),
  pass ``classes=PKU_MMD_PART1_CLASSES``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from skeletons.layouts import NTU25
from skeletons.read_common import SkeletonFormatError, check_on_error, parse_number_lines, read_text
from skeletons.sample import SkeletonDataset, SkeletonSample, SkippedFile

log = logging.getLogger(__name__)

PKU_MMD_PART1_CLASSES: tuple[str, ...] = (
    "bow", "brushing hair", "brushing teeth", "check time (from watch)", "cheer up",
    "clapping", "cross hands in front (say stop)", "drink water", "drop", "eat meal/snack",
    "falling", "giving something to other person", "hand waving", "handshaking",
    "hopping (one foot jumping)", "hugging other person", "jump up", "kicking other person",
    "kicking something", "make a phone call/answer phone", "pat on back of other person",
    "pickup", "playing with phone/tablet", "point finger at the other person",
    "pointing to something with finger", "punching/slapping other person",
    "pushing other person", "put on a hat/cap", "put something inside pocket", "reading",
    "rub two hands together", "salute", "sitting down", "standing up", "take off a hat/cap",
    "take off glasses", "take off jacket", "take out something from pocket",
    "taking a selfie", "tear up paper", "throw", "touch back (backache)",
    "touch chest (stomachache/heart pain)", "touch head (headache)", "touch neck (neckache)",
    "typing on a keyboard", "use a fan (with hand or paper)/feeling warm", "wear jacket",
    "wear on glasses", "wipe face", "writing",
)
PKU_MMD_PART2_CLASSES: tuple[str, ...] = tuple(f"action {i}" for i in range(1, 42))
PARTS = {1: PKU_MMD_PART1_CLASSES, 2: PKU_MMD_PART2_CLASSES}

_VALUES_PER_FRAME = 2 * NTU25.num_joints * 3
_RECORDING = re.compile(r"(?P<video>[A-Za-z0-9]+)-(?P<view>[LMR])")
_PART2_SUBJECT = re.compile(r"A\d+N(\d+)", re.IGNORECASE)
_SKELETON_SUFFIXES = (".txt", ".skeleton")
_LABEL_SUFFIXES = (".txt", ".label")
_SPLIT_HEADER = re.compile(r"^\s*(training|validat\w*|testing|test)\s+videos\s*:?\s*(.*)$",
                           re.IGNORECASE)


@dataclass(frozen=True)
class ActionInstance:
    """One labelled interval of a recording; ``action`` is the 1-based id of the file."""

    action: int
    start: int
    end: int
    confidence: int | None
    line: int


def read_pkummd_skeleton(path: str | Path) -> np.ndarray:
    """A skeleton file as float32 ``[T, 2, 25, 3]``."""
    path = Path(path)
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SkeletonFormatError(path, "no frames (the file is empty)")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise SkeletonFormatError(path, "blank line inside the frames", line=number)
    values = parse_number_lines(path, lines, _VALUES_PER_FRAME)
    return values.reshape(len(lines), 2, NTU25.num_joints, 3)


def read_pkummd_labels(path: str | Path) -> list[ActionInstance]:
    """A label file's action instances, in file order."""
    path = Path(path)
    instances: list[ActionInstance] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.strip().rstrip(",").split(",")]
        if len(fields) not in (3, 4):
            raise SkeletonFormatError(
                path, f"expected 'action, start, end, confidence', found {len(fields)} fields",
                line=number)
        try:
            values = [int(f) for f in fields]
        except ValueError:
            raise SkeletonFormatError(path, f"non-integer field in {line.strip()!r}",
                                      line=number) from None
        action, start, end = values[:3]
        confidence = values[3] if len(values) == 4 else None
        if start < 0 or end <= start:
            raise SkeletonFormatError(path, f"interval [{start}, {end}) is empty or negative",
                                      line=number)
        instances.append(ActionInstance(action, start, end, confidence, number))
    if not instances:
        raise SkeletonFormatError(path, "no action instances (the file is empty)")
    return instances


def read_pkummd_split_list(path: str | Path) -> dict[str, str]:
    """An official split file as ``{recording name: "train" | "test"}``."""
    path = Path(path)
    assignment: dict[str, str] = {}
    section: str | None = None
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        header = _SPLIT_HEADER.match(line)
        if header:
            section = "train" if header.group(1).lower() == "training" else "test"
            line = header.group(2)
        for entry in (e.strip() for e in line.split(",")):
            if not entry:
                continue
            if section is None:
                raise SkeletonFormatError(path, f"{entry!r} appears before any 'Training "
                                          "videos:' or 'Validation videos:' header", line=number)
            if _RECORDING.fullmatch(entry) is None:
                raise SkeletonFormatError(path, f"{entry!r} is not a recording name like "
                                          "0002-L", line=number)
            if assignment.get(entry, section) != section:
                raise SkeletonFormatError(path, f"{entry} is listed for both training and "
                                          "validation", line=number)
            assignment[entry] = section
    if not assignment:
        raise SkeletonFormatError(path, "lists no recordings")
    return assignment


def read_pkummd_recording(
    skeleton_path: str | Path,
    label_path: str | Path,
    *,
    part: int = 1,
    classes: Sequence[str] | None = None,
    subject: str | None = None,
    splits: Mapping[str, Mapping[str, str]] | None = None,
) -> list[SkeletonSample]:
    """The trimmed action samples of one recording (one skeleton file and its labels).

    ``splits`` maps a protocol (``xsub``, ``xview``) to an official split list, whose
    verdict is recorded as ``split_<protocol>``.
    """
    skeleton_path, label_path = Path(skeleton_path), Path(label_path)
    class_names = _classes(part, classes)
    recording = _recording_name(skeleton_path)
    match = _RECORDING.fullmatch(recording)
    assert match is not None  # _recording_name checked it
    video, view = match.group("video"), match.group("view")
    instances = read_pkummd_labels(label_path)
    joints = read_pkummd_skeleton(skeleton_path)
    subject_is_proxy = False
    if subject is None:
        part2 = _PART2_SUBJECT.fullmatch(video)
        if part == 2 and part2 is not None:
            subject = str(int(part2.group(1)))
        else:
            subject, subject_is_proxy = video, True
    recorded = {proto: lst[recording] for proto, lst in (splits or {}).items() if recording in lst}
    samples = []
    for index, inst in enumerate(instances):
        if not 1 <= inst.action <= len(class_names):
            raise SkeletonFormatError(
                label_path, f"action id {inst.action} is outside 1..{len(class_names)} "
                f"(PKU-MMD part {part})", line=inst.line)
        if inst.end > len(joints):
            raise SkeletonFormatError(
                label_path, f"interval [{inst.start}, {inst.end}) runs past the "
                f"{len(joints)} frames of {skeleton_path.name}", line=inst.line)
        meta: dict[str, Any] = {
            "dataset": "pku-mmd",
            "subject": subject,
            "view": view,
            "source": str(skeleton_path),
            "attributes": {},
            "part": part,
            "recording": recording,
            "video": video,
            "label_file": str(label_path),
            "instance": index,
            "start": inst.start,
            "end": inst.end,
            "confidence": inst.confidence,
            "subject_is_proxy": subject_is_proxy,
        }
        meta.update({f"split_{proto}": verdict for proto, verdict in recorded.items()})
        samples.append(SkeletonSample(
            joints=np.ascontiguousarray(joints[inst.start:inst.end]),
            label=inst.action - 1, meta=meta))
    return samples


def _classes(part: int, classes: Sequence[str] | None) -> list[str]:
    if part not in PARTS:
        raise ValueError(f"PKU-MMD part must be 1 or 2, not {part!r}")
    return list(classes) if classes is not None else list(PARTS[part])


def _recording_name(path: Path) -> str:
    name = path.name.split(".")[0]
    if _RECORDING.fullmatch(name) is None:
        raise SkeletonFormatError(path, "file name does not follow NNNN-V (V = L, M or R), "
                                  "e.g. 0002-L.txt", field="file name")
    return name


def _files_by_recording(folder: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    return {
        p.name.split(".")[0]: p for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in tuple(suffixes)
        and _RECORDING.fullmatch(p.name.split(".")[0])
    }


def _find_folder(root: Path, given: str | Path | None, keywords: Sequence[str],
                 suffixes: Sequence[str], what: str, exact: Sequence[str] = ()) -> Path:
    """The option's folder, or the one folder under ``root`` whose name has a keyword
    (or is one of ``exact``) and holds recording files."""
    if given is not None:
        folder = Path(given) if Path(given).is_absolute() else root / given
        if not folder.is_dir():
            raise FileNotFoundError(f"pku-mmd: {what} folder {folder} does not exist")
        return folder
    candidates = [
        d for d in [*root.glob("*"), *root.glob("*/*")]
        if d.is_dir() and (any(k in d.name.lower() for k in keywords) or d.name.lower() in exact)
        and _files_by_recording(d, suffixes)
    ]
    if len(candidates) != 1:
        found = ", ".join(str(c) for c in candidates) or "none"
        raise FileNotFoundError(
            f"pku-mmd: expected one {what} folder under {root} (name containing "
            f"{' or '.join(keywords)}{' or named ' + ' or '.join(exact) if exact else ''}) "
            f"holding NNNN-V files, found {found}; pass {what}_dir=")
    return candidates[0]


def _split_lists(root: Path, split_dir: str | Path | None) -> dict[str, dict[str, str]]:
    folder = root if split_dir is None else (
        Path(split_dir) if Path(split_dir).is_absolute() else root / split_dir)
    lists: dict[str, dict[str, str]] = {}
    for proto, pattern in (("xsub", "cross-subject*.txt"), ("xview", "cross-view*.txt")):
        found = sorted(folder.rglob(pattern))
        if len(found) > 1:
            raise FileNotFoundError(
                f"pku-mmd: several {pattern} under {folder}: "
                f"{', '.join(map(str, found))}; pass split_dir=")
        if found:
            lists[proto] = read_pkummd_split_list(found[0])
    return lists


def _subject_map(subjects: Mapping[str, Any] | str | Path | None) -> dict[str, str]:
    """Recording id -> subject id, from a mapping or a ``video,subject`` CSV file."""
    if subjects is None:
        return {}
    if isinstance(subjects, Mapping):
        return {str(k): str(v) for k, v in subjects.items()}
    path = Path(subjects)
    mapping: dict[str, str] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not all(fields):
            raise SkeletonFormatError(path, "expected 'video,subject'", line=number)
        mapping[fields[0]] = fields[1]
    return mapping


def load_pkummd(
    root: str | Path,
    *,
    part: int = 1,
    skeleton_dir: str | Path | None = None,
    label_dir: str | Path | None = None,
    split_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    subjects: Mapping[str, Any] | str | Path | None = None,
    on_error: str = "raise",
) -> SkeletonDataset:
    """Every recording under ``root`` cut into trimmed action samples.

    The skeleton and label folders are found by name (``skeleton``/``data`` and
    ``label``) unless given; official split lists anywhere under ``root`` (or
    ``split_dir``) fill ``split_xsub``/``split_xview``. ``subjects`` maps recording ids
    (``0002``) to subject ids. With ``on_error="skip"`` a recording with a bad skeleton
    or label file is recorded in ``skipped`` and the others are kept.
    """
    check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pku-mmd: folder {root} does not exist")
    class_names = _classes(part, classes)
    skeleton_folder = _find_folder(root, skeleton_dir, ("skeleton",), _SKELETON_SUFFIXES,
                                   "skeleton", exact=("data",))
    label_folder = _find_folder(root, label_dir, ("label",), _LABEL_SUFFIXES, "label")
    skeletons = _files_by_recording(skeleton_folder, _SKELETON_SUFFIXES)
    labels = _files_by_recording(label_folder, _LABEL_SUFFIXES)
    splits = _split_lists(root, split_dir)
    subject_of = _subject_map(subjects)
    samples: list[SkeletonSample] = []
    skipped: list[SkippedFile] = []
    for recording in sorted(set(skeletons) | set(labels)):
        try:
            if recording not in labels:
                raise SkeletonFormatError(skeletons[recording],
                                          f"has no label file in {label_folder}")
            if recording not in skeletons:
                raise SkeletonFormatError(labels[recording],
                                          f"has no skeleton file in {skeleton_folder}")
            video = recording.rsplit("-", 1)[0]
            samples.extend(read_pkummd_recording(
                skeletons[recording], labels[recording], part=part, classes=class_names,
                subject=subject_of.get(video), splits=splits))
        except (SkeletonFormatError, OSError) as err:
            if on_error == "raise":
                raise
            where = getattr(err, "path", None) or getattr(err, "filename", None) or recording
            skipped.append(SkippedFile(str(where), str(err)))
    if skipped:
        log.warning("pku-mmd: skipped %d recording(s): %s", len(skipped),
                    "; ".join(s.reason for s in skipped))
    return SkeletonDataset("pku-mmd", NTU25, class_names, samples, skipped)
