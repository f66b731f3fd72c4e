"""pyskl annotation pickles (``ntu60_3danno.pkl``, ``ntu120_3danno.pkl``).

Layout: ``{"split": {name: [frame_dir, ...]}, "annotations": [{"frame_dir", "label",
"total_frames", "keypoint": float [M, T, V, C]}, ...]}``; the older mmaction files hold
only the annotation list, and then the file's stem (``ntu60_xsub_train``) names the split.

A pickle can run arbitrary code when loaded, and these files are downloaded from third
parties, so they are read with an unpickler that rebuilds numpy arrays and plain
containers only and refuses every other global, without importing or calling it.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from skeletons.layouts import NTU25
from skeletons.ntu_family import ntu_classes, parse_ntu_name, resolve_ntu
from skeletons.read_common import SkeletonFormatError, check_on_error
from skeletons.sample import SkeletonDataset, SkeletonSample, SkippedFile

log = logging.getLogger(__name__)


class UnsafePickleError(SkeletonFormatError):
    """A pickle that asks for a global outside the numpy/container allow-list."""

    def __init__(self, path: str | Path, module: str, name: str):
        self.global_name = f"{module}.{name}"
        super().__init__(
            path,
            f"refused to load: the pickle asks for global {self.global_name!r}, which is not "
            "a numpy array or plain container (it could run code; nothing was executed)",
        )


def _numpy_attr(submodule: str, name: str) -> Callable[..., Any]:
    """A numpy internal that exists as ``numpy._core.X`` (numpy 2) or ``numpy.core.X`` (1.x)."""
    core = getattr(np, "_core", None)
    if core is None:  # numpy 1.x
        import numpy.core as core  # type: ignore[no-redef]
    module = core
    for part in submodule.split("."):
        module = getattr(module, part)
    return getattr(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes; only latin-1 text."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode called with encoding {encoding!r}")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for prefix in ("numpy.core", "numpy._core"):
        for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                ("numeric", "_frombuffer")):
            allowed[(f"{prefix}.{submodule}", name)] = _numpy_attr(submodule, name)
    for name in ("list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes",
                 "str", "int", "float", "complex", "bool"):
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = allowed[("builtins", name)]  # Python 2 pickles
    return allowed


_ALLOWED = _allowed_globals()


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves globals from the allow-list only; nothing is imported on the pickle's behalf."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="latin1")  # latin1 keeps Python 2 numpy pickles intact
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(self._path, module, name) from None


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle that may only contain numpy arrays, numpy scalars and containers."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            return _ArrayOnlyUnpickler(handle, path).load()
        except UnsafePickleError:
            raise
        except EOFError:
            raise SkeletonFormatError(
                path, "truncated pickle (ended before its STOP opcode)") from None
        except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, UnicodeDecodeError) as err:
            raise SkeletonFormatError(path, f"not a readable pickle: {err}") from None


def _split_part(name: str) -> tuple[str, str] | None:
    """``xsub_train`` -> (``xsub``, ``train``); ``val`` and ``test`` both mean test."""
    match = re.fullmatch(r"(?:ntu\d+_)?(.+?)[_-](train|val|test)", name.lower())
    if match is None:
        return None
    return match.group(1), "train" if match.group(2) == "train" else "test"


def _read_annotation(path: Path, index: int, ann: Any, splits: list[str]) -> SkeletonSample:
    """One annotation dict as a sample in the NTU25 layout (labels checked later)."""
    where = f"annotations[{index}]"
    if not isinstance(ann, dict):
        raise SkeletonFormatError(path, f"is a {type(ann).__name__}, not a dict", field=where)
    for key in ("frame_dir", "label", "keypoint"):
        if key not in ann:
            raise SkeletonFormatError(path, "missing", field=f"{where}.{key}")
    frame_dir = ann["frame_dir"]
    if not isinstance(frame_dir, str) or not frame_dir:
        raise SkeletonFormatError(path, f"must be a non-empty string, found {frame_dir!r}",
                                  field=f"{where}.frame_dir")
    where = f"{where} ({frame_dir})"
    label = ann["label"]
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
        raise SkeletonFormatError(path, f"must be a non-negative integer, found {label!r}",
                                  field=f"{where}.label")
    kp = ann["keypoint"]
    if not isinstance(kp, np.ndarray) or kp.dtype.kind not in "fiu":
        raise SkeletonFormatError(path, "must be a numeric numpy array", field=f"{where}.keypoint")
    if kp.ndim != 4:
        raise SkeletonFormatError(path, f"must be [M, T, V, C], found shape {list(kp.shape)}",
                                  field=f"{where}.keypoint")
    persons, frames, joints, channels = kp.shape
    if channels != 3:
        raise SkeletonFormatError(
            path, f"has C={channels}; only 3D keypoints (C=3) are read "
            "(C=2 marks a 2D pose-estimation file)", field=f"{where}.keypoint")
    if joints != NTU25.num_joints:
        raise SkeletonFormatError(
            path, f"has V={joints} joints; the NTU layout has {NTU25.num_joints}",
            field=f"{where}.keypoint")
    if persons < 1 or frames < 1:
        raise SkeletonFormatError(path, f"is empty (shape {list(kp.shape)})",
                                  field=f"{where}.keypoint")
    total = ann.get("total_frames", frames)
    if not isinstance(total, (int, np.integer)) or int(total) != frames:
        raise SkeletonFormatError(
            path, f"is {total!r} but keypoint has {frames} frames", field=f"{where}.total_frames")
    joints_arr = np.ascontiguousarray(kp.transpose(1, 0, 2, 3), dtype=np.float32)
    if np.isinf(joints_arr).any():
        raise SkeletonFormatError(path, "contains an infinite value", field=f"{where}.keypoint")
    parsed = parse_ntu_name(frame_dir)
    meta: dict[str, Any] = {"subject": "unknown", "view": None}
    if parsed is not None:
        meta.update(parsed.meta())
    meta.update({
        "source": str(path),
        "attributes": {},
        "frame_dir": frame_dir,
        "split": sorted(splits),
    })
    for name in splits:
        part = _split_part(name)
        if part is not None:
            meta[f"split_{part[0]}"] = part[1]
    return SkeletonSample(joints=joints_arr, label=int(label), meta=meta)


def _file_contents(path: Path) -> tuple[dict[str, list[str]], list[Any]]:
    """The split dict and annotation list of one file, in either layout."""
    doc = safe_load_pickle(path)
    if isinstance(doc, list):
        return {path.stem: [a.get("frame_dir") for a in doc if isinstance(a, dict)]}, doc
    if not isinstance(doc, dict):
        raise SkeletonFormatError(path, f"top level is a {type(doc).__name__}, expected a dict "
                                  "with 'split' and 'annotations' (or a list of annotations)")
    if "annotations" not in doc:
        raise SkeletonFormatError(path, "missing", field="annotations")
    annotations = doc["annotations"]
    if not isinstance(annotations, list):
        raise SkeletonFormatError(path, f"is a {type(annotations).__name__}, not a list",
                                  field="annotations")
    splits = doc.get("split", {})
    if not isinstance(splits, dict):
        raise SkeletonFormatError(path, f"is a {type(splits).__name__}, not a dict", field="split")
    names = {a.get("frame_dir") for a in annotations if isinstance(a, dict)}
    for split_name, members in splits.items():
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, str) for m in members):
            raise SkeletonFormatError(path, "must be a list of frame_dir strings",
                                      field=f"split[{split_name!r}]")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise SkeletonFormatError(
                path, f"names {len(unknown)} frame_dir(s) with no annotation, e.g. {unknown[0]!r}",
                field=f"split[{split_name!r}]")
    return {str(k): list(v) for k, v in splits.items()}, annotations


def read_pyskl_file(path: str | Path, on_error: str = "raise"
                    ) -> tuple[list[SkeletonSample], list[SkippedFile]]:
    """Samples of one pyskl pickle; with ``on_error="skip"`` bad annotations are recorded.

    Labels are kept as stored (0-based); :func:`load_pyskl` checks them against the
    data set's classes.
    """
    check_on_error(on_error)
    path = Path(path)
    splits, annotations = _file_contents(path)
    membership: dict[str, list[str]] = {}
    for split_name, members in splits.items():
        for member in members:
            membership.setdefault(member, []).append(split_name)
    samples: list[SkeletonSample] = []
    skipped: list[SkippedFile] = []
    for i, ann in enumerate(annotations):
        frame_dir = ann.get("frame_dir") if isinstance(ann, dict) else None
        try:
            samples.append(_read_annotation(path, i, ann, membership.get(frame_dir, [])))
        except SkeletonFormatError as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(f"{path}#annotations[{i}]", str(err)))
    return samples, skipped


def _infer_version(samples: Sequence[SkeletonSample]) -> int | None:
    """120 when any sample is beyond NTU-60, 60 when all are NTU-60 names, else None."""
    if not samples:
        return None
    named = [parse_ntu_name(s.meta["frame_dir"]) for s in samples]
    if all(n is None for n in named):
        return None
    if any(n is not None and not n.in_ntu60 for n in named) or max(s.label for s in samples) >= 60:
        return 120
    return 60


def load_pyskl(
    root: str | Path,
    *,
    dataset: str | None = None,
    classes: Sequence[str] | None = None,
    on_error: str = "raise",
) -> SkeletonDataset:
    """A pyskl pickle, or every ``*.pkl`` in a folder merged by ``frame_dir``.

    NTU content (``frame_dir`` names ``SsssCcccPpppRrrrAaaa``) is named ``ntu`` with 60
    or 120 classes as the names show (``dataset="ntu60"``/``"ntu120"`` fixes it); its
    labels must equal the action number minus one. Another ``dataset`` name, or your own
    ``classes``, reads the file as a data set of its own: labels only have to be in range.
    Meta ``split`` lists the split names holding the sample, ``split_<protocol>``
    (``xsub``...) says train or test.
    """
    check_on_error(on_error)
    root = Path(root)
    if root.is_dir():
        paths = sorted(p for p in root.glob("*.pkl") if p.is_file())
        if not paths:
            raise FileNotFoundError(f"pyskl: no *.pkl files in {root}")
    elif root.is_file():
        paths = [root]
    else:
        raise FileNotFoundError(f"pyskl: {root} does not exist")
    merged: dict[str, SkeletonSample] = {}
    skipped: list[SkippedFile] = []
    for path in paths:
        try:
            file_samples, file_skipped = read_pyskl_file(path, on_error)
        except (SkeletonFormatError, OSError) as err:
            if on_error == "raise" or len(paths) == 1:
                raise
            skipped.append(SkippedFile(str(path), str(err)))
            continue
        skipped.extend(file_skipped)
        for sample in file_samples:
            try:
                _merge(merged, sample)
            except SkeletonFormatError as err:
                if on_error == "raise":
                    raise
                skipped.append(SkippedFile(f"{path}#{sample.meta['frame_dir']}", str(err)))
    samples = list(merged.values())
    name, version = resolve_ntu(dataset, _infer_version(samples))
    name = name or (paths[0].stem if len(paths) == 1 else root.name)
    if classes is not None:
        class_names = list(classes)
    elif version is not None:
        class_names = ntu_classes(version)
    else:
        class_names = [f"class {i}" for i in range(max((s.label for s in samples), default=-1) + 1)]
    kept: list[SkeletonSample] = []
    for sample in samples:
        try:
            _check_label(sample, class_names, check_action=version is not None and classes is None)
        except SkeletonFormatError as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(f"{sample.meta['source']}#{sample.meta['frame_dir']}",
                                       str(err)))
            continue
        sample.meta["dataset"] = name
        kept.append(sample)
    if skipped:
        log.warning("pyskl: skipped %d annotation(s) or file(s)", len(skipped))
    return SkeletonDataset(name, NTU25, class_names, kept, skipped)


def _merge(merged: dict[str, SkeletonSample], sample: SkeletonSample) -> None:
    """Keep one sample per frame_dir; the same sequence in two files joins their splits."""
    key = sample.meta["frame_dir"]
    first = merged.get(key)
    if first is None:
        merged[key] = sample
        return
    if first.label != sample.label or first.joints.shape != sample.joints.shape:
        raise SkeletonFormatError(
            sample.meta["source"], f"disagrees with {first.meta['source']} on label or shape",
            field=f"frame_dir {key!r}")
    first.meta["split"] = sorted(set(first.meta["split"]) | set(sample.meta["split"]))
    for k, v in sample.meta.items():
        if k.startswith("split_"):
            first.meta.setdefault(k, v)


def _check_label(sample: SkeletonSample, classes: Sequence[str], check_action: bool) -> None:
    source, frame_dir = sample.meta["source"], sample.meta["frame_dir"]
    if sample.label >= len(classes):
        raise SkeletonFormatError(
            source, f"is {sample.label}, outside the {len(classes)} classes",
            field=f"annotations ({frame_dir}).label")
    parsed = parse_ntu_name(frame_dir)
    if check_action and parsed is not None and sample.label != parsed.action - 1:
        raise SkeletonFormatError(
            source, f"is {sample.label} but {frame_dir} is action A{parsed.action:03d} "
            f"(label {parsed.action - 1})", field=f"annotations ({frame_dir}).label")
