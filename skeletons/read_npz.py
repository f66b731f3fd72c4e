"""The ``.npz`` format through which a user brings any other skeleton data set.

One ``.npz`` file (NumPy ``savez``; read without pickle) holds a whole data set:

==============  =====================================  ==========================================
array           shape, type                            meaning
==============  =====================================  ==========================================
``joints``      float ``[N, T, M, V, 3]``              xyz per sample, frame, person, joint; zero
                (or ``[N, T, V, 3]`` for one person)   padded after each sample's length
``lengths``     int ``[N]``, optional                  frames of each sample (default: all ``T``)
``labels``      int ``[N]``                            class index, ``0 <= label < K``
``subjects``    str or int ``[N]``                     who was recorded (for per-subject splits)
``views``       str or int ``[N]``, optional           camera or view
``classes``     str ``[K]``, optional                  class names (default ``"0"``..``"K-1"``)
``layout``      str scalar                             joint layout name: ``kinect-v1``,
                                                       ``msr-action3d`` or ``ntu25``
``name``        str scalar, optional                   data set name (default: the file's stem)
``attr_<key>``  str, int, float or bool ``[N]``,       per-sample attribute, e.g. ``attr_sex``,
                optional                               ``attr_age``; lands in ``meta["attributes"]``
==============  =====================================  ==========================================

NaN in ``joints`` marks a lost joint (preprocessing fills it); infinity is an error.
``root`` may also be a folder: every ``*.npz`` in it is loaded and the samples joined;
the files must agree on layout and classes. :func:`write_npz` writes this format.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from skeletons.layouts import get_layout
from skeletons.read_common import SkeletonFormatError, check_on_error, find_files
from skeletons.sample import SkeletonDataset, SkeletonSample, SkippedFile

log = logging.getLogger(__name__)

_KNOWN = {"joints", "lengths", "labels", "subjects", "views", "classes", "layout", "name"}
ATTR_PREFIX = "attr_"


def read_npz_file(path: str | Path) -> SkeletonDataset:
    """A data set from one ``.npz`` file in the format described above."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: _array(path, archive, key) for key in archive.files}
    except (SkeletonFormatError, FileNotFoundError):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise SkeletonFormatError(path, f"not a readable .npz archive ({err})") from None
    for key in sorted(set(arrays) - _KNOWN):
        if not key.startswith(ATTR_PREFIX):
            log.warning("%s: ignoring unknown array %r", path, key)
    joints = _required(path, arrays, "joints")
    if joints.ndim == 4:
        joints = joints[:, :, None]
    if joints.ndim != 5 or joints.shape[-1] != 3 or joints.shape[1] == 0:
        raise SkeletonFormatError(
            path, f"shape {list(joints.shape)} is not [N, T>0, M, V, 3] or [N, T>0, V, 3]",
            field="joints")
    if not np.issubdtype(joints.dtype, np.number):
        raise SkeletonFormatError(path, f"dtype {joints.dtype} is not numeric", field="joints")
    joints = joints.astype(np.float32, copy=False)
    if np.isinf(joints).any():
        raise SkeletonFormatError(
            path, f"infinite value in sample {int(np.argwhere(np.isinf(joints))[0][0])}",
            field="joints")
    n, max_t = joints.shape[:2]
    layout_name = _scalar(path, _required(path, arrays, "layout"), "layout")
    try:
        layout = get_layout(layout_name)
    except ValueError as err:
        raise SkeletonFormatError(path, str(err), field="layout") from None
    if joints.shape[3] != layout.num_joints:
        raise SkeletonFormatError(
            path, f"has {joints.shape[3]} joints, layout {layout.name!r} has {layout.num_joints}",
            field="joints")
    labels = _per_sample(path, arrays, "labels", n)
    if not np.issubdtype(labels.dtype, np.integer):
        raise SkeletonFormatError(path, f"dtype {labels.dtype} is not integer", field="labels")
    if "classes" in arrays:
        classes = [str(c) for c in np.atleast_1d(arrays["classes"])]
    else:
        classes = [str(k) for k in range(int(labels.max(initial=-1)) + 1)]
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(bad):
        raise SkeletonFormatError(
            path, f"sample {bad[0]} has label {labels[bad[0]]}, outside 0..{len(classes) - 1}",
            field="labels")
    lengths = _per_sample(path, arrays, "lengths", n) if "lengths" in arrays else np.full(n, max_t)
    bad = np.flatnonzero((lengths < 1) | (lengths > max_t))
    if len(bad):
        raise SkeletonFormatError(
            path, f"sample {bad[0]} has length {lengths[bad[0]]}, outside 1..{max_t}",
            field="lengths")
    subjects = _per_sample(path, arrays, "subjects", n)
    views = _per_sample(path, arrays, "views", n) if "views" in arrays else None
    attrs = {key[len(ATTR_PREFIX):]: _per_sample(path, arrays, key, n)
             for key in arrays if key.startswith(ATTR_PREFIX)}
    samples = [
        SkeletonSample(
            joints=np.ascontiguousarray(joints[i, : int(lengths[i])]),
            label=int(labels[i]),
            meta={
                "dataset": "",
                "subject": str(subjects[i]),
                "view": None if views is None else str(views[i]),
                "source": f"{path}#{i}",
                "attributes": {k: v[i].item() for k, v in attrs.items()},
            },
        )
        for i in range(n)
    ]
    name = _scalar(path, arrays["name"], "name") if "name" in arrays else path.stem
    for sample in samples:
        sample.meta["dataset"] = name
    return SkeletonDataset(name, layout, classes, samples)


def _array(path: Path, archive: Any, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as err:  # object arrays need pickle, which is refused
        raise SkeletonFormatError(
            path, f"cannot be read without pickle ({err}); store plain arrays", field=key) from None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise SkeletonFormatError(path, f"damaged array ({err})", field=key) from None


def _required(path: Path, arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in arrays:
        raise SkeletonFormatError(path, "required array is missing", field=key)
    return arrays[key]


def _per_sample(path: Path, arrays: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    value = _required(path, arrays, key)
    if value.shape != (n,):
        raise SkeletonFormatError(
            path, f"shape {list(value.shape)} should be [{n}], one per sample", field=key)
    return value


def _scalar(path: Path, value: np.ndarray, key: str) -> str:
    if value.size != 1:
        raise SkeletonFormatError(path, f"should be one string, has shape {list(value.shape)}",
                                  field=key)
    return str(value.reshape(()).item())


def load_npz(root: str | Path, on_error: str = "raise") -> SkeletonDataset:
    """One ``.npz`` file, or every ``*.npz`` in a folder joined into one data set."""
    check_on_error(on_error)
    root = Path(root)
    if root.is_file() or root.suffix == ".npz":
        return read_npz_file(root)
    parts: list[SkeletonDataset] = []
    skipped: list[SkippedFile] = []
    for path in find_files(root, ["*.npz"], "npz"):
        try:
            part = read_npz_file(path)
            if parts and (part.layout != parts[0].layout or part.classes != parts[0].classes):
                raise SkeletonFormatError(
                    path, f"layout or classes differ from {parts[0].samples[0].meta['source']}",
                    field="classes")
            parts.append(part)
        except (SkeletonFormatError, OSError) as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(str(path), str(err)))
    if skipped:
        log.warning("npz: skipped %d file(s): %s", len(skipped), "; ".join(s.reason for s in skipped))
    if not parts:
        raise FileNotFoundError(f"npz: no readable .npz file under {root}")
    samples = [s for part in parts for s in part.samples]
    return SkeletonDataset(root.name, parts[0].layout, parts[0].classes, samples, skipped)


def write_npz(dataset: SkeletonDataset, path: str | Path) -> Path:
    """Write ``dataset`` in the ``.npz`` format above (atomically); persons and frames are
    zero padded to the largest sample. Attributes are kept when every sample has them as a
    plain value of one type."""
    path = Path(path)
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot write an empty data set")
    max_t = max(s.joints.shape[0] for s in dataset)
    max_m = max(s.joints.shape[1] for s in dataset)
    joints = np.zeros((n, max_t, max_m, dataset.layout.num_joints, 3), dtype=np.float32)
    for i, s in enumerate(dataset):
        joints[i, : s.joints.shape[0], : s.joints.shape[1]] = s.joints
    arrays: dict[str, np.ndarray] = {
        "joints": joints,
        "lengths": np.array([s.joints.shape[0] for s in dataset], dtype=np.int64),
        "labels": dataset.labels,
        "subjects": np.array([s.subject for s in dataset]),
        "classes": np.array(dataset.classes),
        "layout": np.array(dataset.layout.name),
        "name": np.array(dataset.name),
    }
    if all(s.view is not None for s in dataset):
        arrays["views"] = np.array([s.view for s in dataset])
    for key in sorted({k for s in dataset for k in s.attributes}):
        values = [s.attributes.get(key) for s in dataset]
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and kinds <= {str, int, float, bool}:
            arrays[ATTR_PREFIX + key] = np.array(values)
        else:
            log.warning("write_npz: attribute %r is not one plain type in every sample; left out",
                        key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
