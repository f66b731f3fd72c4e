"""CTR-GCN / SGN style ``.npz`` files (``NTU60_CS.npz``, ``NTU120_CSet.npz``...).

Keys ``x_train``, ``y_train``, ``x_test``, ``y_test``; ``x_*`` is ``[N, T, M*V*C]``
(usually T=300, M=2 persons, V=25 joints, C=3, person-major then joint then xyz) with
zeros where a second person is absent and after the sequence ends; ``y_*`` is one-hot
``[N, classes]`` (integer labels ``[N]`` are accepted too).

Trailing all-zero frames are stripped; the zero second person is kept (the NTU
convention of two person slots). The files hold no subject or camera ids: those are
``"unknown"`` unless the NTU names or subject ids of the samples are given (``names=``,
``subjects=``), e.g. from the sample lists the files were generated from.

The arrays are streamed from the zip archive a few rows at a time: a padded NTU-60
training array is about 7 GB, the stripped samples a fraction of that.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import numpy as np
from numpy.lib import format as npformat

from skeletons.layouts import NTU25
from skeletons.ntu_family import ntu_classes, parse_ntu_name, resolve_ntu
from skeletons.read_common import SkeletonFormatError, check_on_error
from skeletons.sample import SkeletonDataset, SkeletonSample, SkippedFile
from skeletons.standard_splits import normalize_protocol

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
_CHUNK_ROWS = 256
_VALUES_PER_PERSON = NTU25.num_joints * 3


def _member(zf: zipfile.ZipFile, key: str) -> zipfile.ZipInfo | None:
    for candidate in (f"{key}.npy", key):
        try:
            return zf.getinfo(candidate)
        except KeyError:
            continue
    return None


def _open_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str
                ) -> tuple[BinaryIO, tuple[int, ...], np.dtype]:
    """Open one ``.npy`` member and read its header (shape, dtype) without its data."""
    handle = zf.open(info)
    try:
        version = npformat.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(handle)
        else:
            shape, fortran, dtype = npformat._read_array_header(handle, version)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        handle.close()
        raise SkeletonFormatError(path, f"not a readable .npy array: {err}", field=key) from None
    if dtype.hasobject or dtype.kind not in "fiub":
        handle.close()
        raise SkeletonFormatError(path, f"has dtype {dtype}, expected numbers", field=key)
    if fortran and len(shape) > 1:
        handle.close()
        raise SkeletonFormatError(path, "is stored in Fortran order; save it in C order",
                                  field=key)
    return handle, tuple(shape), dtype


def _read_exact(handle: BinaryIO, nbytes: int, path: Path, field: str) -> bytes:
    try:
        data = handle.read(nbytes)
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise SkeletonFormatError(path, f"damaged data: {err}", field=field) from None
    if len(data) != nbytes:
        raise SkeletonFormatError(path, "truncated: the array data ends early", field=field)
    return data


def _read_labels(zf: zipfile.ZipFile, path: Path, key: str, n: int
                 ) -> tuple[np.ndarray, int | None]:
    """Integer labels from one-hot ``[N, K]`` (returns K) or plain ``[N]`` labels."""
    info = _member(zf, key)
    if info is None:
        raise SkeletonFormatError(path, "missing", field=key)
    handle, shape, dtype = _open_array(zf, info, path, key)
    with handle:
        count = int(np.prod(shape)) if shape else 1
        y = np.frombuffer(_read_exact(handle, count * dtype.itemsize, path, key),
                          dtype=dtype).reshape(shape)
    if y.ndim == 0 or y.shape[0] != n:
        raise SkeletonFormatError(path, f"has shape {list(y.shape)}, expected {n} rows "
                                  f"(one per sample of x_{key[2:]})", field=key)
    if y.ndim == 1:
        labels = y.astype(np.int64)
        if not np.array_equal(labels, y) or (labels < 0).any():
            bad = int(np.flatnonzero((labels != y) | (labels < 0))[0])
            raise SkeletonFormatError(path, f"is {y[bad]!r}, not a class index",
                                      field=f"{key}[{bad}]")
        return labels, None
    if y.ndim != 2:
        raise SkeletonFormatError(path, f"has shape {list(y.shape)}, expected [N, classes]",
                                  field=key)
    ones = (y == 1).sum(axis=1)
    zeros = (y == 0).sum(axis=1)
    bad_rows = np.flatnonzero((ones != 1) | (ones + zeros != y.shape[1]))
    if bad_rows.size:
        raise SkeletonFormatError(path, "is not one-hot (exactly one 1, the rest 0)",
                                  field=f"{key}[{int(bad_rows[0])}]")
    return y.argmax(axis=1).astype(np.int64), int(y.shape[1])


def _iter_rows(handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, path: Path, key: str
               ) -> Iterator[tuple[int, np.ndarray]]:
    """Rows ``[T, F]`` of an ``[N, T, F]`` array, read a chunk at a time."""
    n, t, f = shape
    row_bytes = t * f * dtype.itemsize
    for start in range(0, n, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, n - start)
        data = _read_exact(handle, rows * row_bytes, path, f"{key}[{start}:{start + rows}]")
        chunk = np.frombuffer(data, dtype=dtype).reshape(rows, t, f)
        for i in range(rows):
            yield start + i, chunk[i]


def _strip(path: Path, row: np.ndarray, field: str) -> np.ndarray:
    """``[T, F]`` -> float32 ``[T', M, 25, 3]`` without the trailing all-zero frames."""
    nonzero = np.flatnonzero(np.any(row != 0, axis=1))
    if nonzero.size == 0:
        raise SkeletonFormatError(path, "every frame is zero (an empty sample)", field=field)
    joints = row[: nonzero[-1] + 1].astype(np.float32)
    if np.isinf(joints).any():
        raise SkeletonFormatError(path, "contains an infinite value", field=field)
    persons = joints.shape[1] // _VALUES_PER_PERSON
    return np.ascontiguousarray(joints.reshape(len(joints), persons, NTU25.num_joints, 3))


def _side_list(path: Path, value: Sequence[Any] | str | Path, n: int, what: str) -> list[str]:
    """Per-sample names or subject ids, from a sequence or a text file of one per line."""
    if isinstance(value, (str, Path)):
        source = Path(value)
        items = [ln.strip() for ln in source.read_text().splitlines() if ln.strip()]
    else:
        source, items = path, [str(v) for v in value]
    if len(items) != n:
        raise SkeletonFormatError(source, f"has {len(items)} entries for {n} samples", field=what)
    return items


def _infer_version(path: Path, num_classes: int | None) -> int | None:
    """120 or 60 from the file name (``NTU120_CSet``) or the one-hot width, else None."""
    stem = path.stem.lower()
    if re.search(r"ntu[-_]?120", stem) or num_classes == 120:
        return 120
    if re.search(r"ntu[-_]?60", stem) or num_classes == 60:
        return 60
    return None


def _infer_protocol(path: Path) -> str | None:
    match = re.search(r"[-_](cs|csub|cv|cset|xsub|xview|xset)$", path.stem.lower())
    return normalize_protocol(match.group(1)) if match else None


def read_ctrgcn_npz(
    path: str | Path,
    *,
    dataset: str | None = None,
    classes: Sequence[str] | None = None,
    protocol: str | None = None,
    names: Mapping[str, Sequence[str] | str | Path] | None = None,
    subjects: Mapping[str, Sequence[Any] | str | Path] | None = None,
    on_error: str = "raise",
) -> SkeletonDataset:
    """Every sample of one ``.npz`` file, meta ``split`` = ``train``/``test``.

    NTU content (``NTU60``/``NTU120`` in the file name, or 60/120 one-hot columns) is
    named ``ntu`` with the NTU classes; ``dataset="ntu60"``/``"ntu120"`` fixes that, any
    other ``dataset`` name or ``classes`` list makes it a data set of its own.
    ``protocol`` (``xsub``/``xview``/``xset``, inferred from ``_CS``/``_CV``/``_CSet``
    in the file name) also records ``split_<protocol>``. ``names`` maps a split to the
    samples' NTU names (a list or a text file, one per line) and fills subject, camera
    and setup; ``subjects`` gives subject ids alone. With ``on_error="skip"`` a bad
    sample (empty, infinite values) is recorded and the rest are kept.
    """
    check_on_error(on_error)
    path = Path(path)
    proto = normalize_protocol(protocol) if protocol else _infer_protocol(path)
    samples: list[SkeletonSample] = []
    skipped: list[SkippedFile] = []
    num_classes: int | None = None
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as err:
        raise SkeletonFormatError(path, f"not a readable .npz (zip) archive: {err}") from None
    with zf:
        present = [s for s in SPLITS if _member(zf, f"x_{s}") is not None]
        if not present:
            raise SkeletonFormatError(path, "has neither x_train nor x_test", field="x_train")
        for split in present:
            key = f"x_{split}"
            handle, shape, dtype = _open_array(zf, _member(zf, key), path, key)
            with handle:
                if (len(shape) != 3 or shape[2] % _VALUES_PER_PERSON or shape[2] == 0
                        or shape[1] == 0):
                    raise SkeletonFormatError(
                        path, f"has shape {list(shape)}, expected [N, T, persons*25*3]", field=key)
                labels, k = _read_labels(zf, path, f"y_{split}", shape[0])
                if k is not None:
                    if num_classes is not None and k != num_classes:
                        raise SkeletonFormatError(
                            path, f"has {k} classes but y_{SPLITS[0]} has {num_classes}",
                            field=f"y_{split}")
                    num_classes = k
                split_names = (_side_list(path, names[split], shape[0], f"names[{split!r}]")
                               if names and split in names else None)
                split_subjects = (_side_list(path, subjects[split], shape[0],
                                             f"subjects[{split!r}]")
                                  if subjects and split in subjects else None)
                for i, row in _iter_rows(handle, shape, dtype, path, key):
                    field = f"{key}[{i}]"
                    try:
                        joints = _strip(path, row, field)
                        meta = _meta(path, split, proto, i, int(labels[i]),
                                     split_names[i] if split_names else None,
                                     split_subjects[i] if split_subjects else None)
                    except SkeletonFormatError as err:
                        if on_error == "raise":
                            raise
                        skipped.append(SkippedFile(f"{path}#{field}", str(err)))
                        continue
                    samples.append(SkeletonSample(joints=joints, label=int(labels[i]), meta=meta))
    name, version = resolve_ntu(dataset, _infer_version(path, num_classes))
    name = name or path.stem
    if classes is not None:
        class_names = list(classes)
    elif version is not None:
        class_names = ntu_classes(version)
    else:
        count = num_classes or max((s.label for s in samples), default=-1) + 1
        class_names = [f"class {i}" for i in range(count)]
    kept: list[SkeletonSample] = []
    for sample in samples:
        field = f"y_{sample.meta['split']}[{sample.meta['index']}]"
        if sample.label >= len(class_names):
            err = SkeletonFormatError(
                path, f"label {sample.label} is outside the {len(class_names)} classes of {name}",
                field=field)
            if on_error == "raise":
                raise err
            skipped.append(SkippedFile(f"{path}#{field}", str(err)))
            continue
        sample.meta["dataset"] = name
        kept.append(sample)
    samples = kept
    if skipped:
        log.warning("ctrgcn-npz: skipped %d sample(s) of %s", len(skipped), path)
    return SkeletonDataset(name, NTU25, class_names, samples, skipped)


def _meta(path: Path, split: str, proto: str | None, index: int, label: int,
          name: str | None, subject: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"subject": "unknown", "view": None}
    if name is not None:
        parsed = parse_ntu_name(name)
        if parsed is None:
            raise SkeletonFormatError(path, f"{name!r} is not an NTU name SsssCcccPpppRrrrAaaa",
                                      field=f"names[{split!r}][{index}]")
        if parsed.action - 1 != label:
            raise SkeletonFormatError(
                path, f"{name} is action A{parsed.action:03d} but y_{split}[{index}] is "
                f"class {label} (the names do not match the samples)",
                field=f"names[{split!r}][{index}]")
        meta.update(parsed.meta())
        meta["frame_dir"] = name
    if subject is not None:
        meta["subject"] = str(subject).strip()
    meta.update({
        "source": str(path),
        "attributes": {},
        "split": split,
        "index": index,
    })
    if proto:
        meta[f"split_{proto}"] = split
    return meta


def load_ctrgcn_npz(root: str | Path, *, file: str | None = None, **options: Any
                    ) -> SkeletonDataset:
    """A CTR-GCN ``.npz`` file, or the single ``*.npz`` in a folder (``file=`` picks one).

    Options are those of :func:`read_ctrgcn_npz`. A folder with several ``.npz`` files
    is refused rather than merged: ``NTU60_CS.npz`` and ``NTU60_CV.npz`` hold the same
    sequences split two ways.
    """
    root = Path(root)
    if root.is_dir():
        if file is not None:
            return read_ctrgcn_npz(root / file, **options)
        paths = sorted(p for p in root.glob("*.npz") if p.is_file())
        if len(paths) != 1:
            found = ", ".join(p.name for p in paths) or "none"
            raise FileNotFoundError(
                f"ctrgcn-npz: expected one *.npz in {root}, found {found}; pass file=NAME")
        return read_ctrgcn_npz(paths[0], **options)
    if not root.is_file():
        raise FileNotFoundError(f"ctrgcn-npz: {root} does not exist")
    return read_ctrgcn_npz(root, **options)
