"""On-disk cache of parsed data sets and of preprocessed model input.

Parsing thousands of text files and preprocessing them takes seconds each time; a
benchmark or a site restarts often. Entries live in :func:`cache_dir` (``$FEDSAR_CACHE_DIR``,
default ``~/.cache/fedsar``) as ``.npz`` files without pickle, written atomically. An entry's key
covers the data set name, the loader options, the preprocessing config, a fingerprint of
the source files (relative path, size and modification time of every file under the
data set's folder) and of the reading and preprocessing code, so any change to the data
or the code is noticed and the entry rebuilt. Older entries for the same name, options
and config are removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skeletons.atomic import read_cached_arrays
from skeletons.datasets import load_dataset
from skeletons.layouts import Layout, get_layout
from skeletons.preprocess import PreprocessConfig, to_arrays
from skeletons.sample import SkeletonDataset, SkeletonSample, SkippedFile

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_CODE_FILES = ("layouts.py", "sample.py", "preprocess.py", "datasets.py", "cache.py")


def cache_dir() -> Path:
    """The one folder where fedsar keeps what it builds once per machine (these entries
    and the private recipe's warm start): ``$FEDSAR_CACHE_DIR``, else ``$FEDSAR_CACHE``
    (its older name, once read by the warm start alone), else
    ``$XDG_CACHE_HOME/fedsar``, else ``~/.cache/fedsar``."""
    env = os.environ.get("FEDSAR_CACHE_DIR") or os.environ.get("FEDSAR_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fedsar"


def source_fingerprint(root: str | Path) -> str:
    """Hash of (relative path, size, mtime) of every file under ``root`` (or of the file)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data set source {root} does not exist")
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        st = path.stat()
        rel = path.name if path == root else path.relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def code_fingerprint() -> str:
    """Hash of the modules that read and preprocess data: a code change rebuilds entries."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(str(CACHE_FORMAT).encode())
    for path in sorted(here.glob("read_*.py")) + [here / f for f in _CODE_FILES]:
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """JSON form of numpy scalars, paths and layouts found in metadata and options."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Layout):
        return value.name
    return str(value)


def _entry_path(kind: str, name: str, root: Path, settings: dict[str, Any],
                directory: Path | None) -> tuple[Path, str]:
    """Cache file for these settings and sources, and the prefix shared by its older versions."""
    settings = dict(settings, root=str(root.expanduser().resolve()), code=code_fingerprint())
    prefix = f"{name}-{kind}-{_digest(settings)}-"
    return (directory or cache_dir()) / f"{prefix}{source_fingerprint(root)[:16]}.npz", prefix


def _write_atomic(path: Path, prefix: str, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in path.parent.glob(prefix + "*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def _json(value: Any) -> np.ndarray:
    return np.array(json.dumps(value, default=_plain))


# ------------------------------------------------------------------------------- data sets

def cached_dataset(name: str, root: str | Path, *, directory: str | Path | None = None,
                   refresh: bool = False, **options: Any) -> SkeletonDataset:
    """:func:`~skeletons.datasets.load_dataset` through the cache of parsed data sets."""
    root = Path(root)
    path, prefix = _entry_path("raw", name, root, {"options": options},
                               Path(directory) if directory else None)
    arrays = None if refresh else read_cached_arrays(path)
    if arrays is not None:
        try:
            return _dataset_from_arrays(arrays)
        except (KeyError, ValueError) as err:
            log.warning("cache entry %s is inconsistent (%s); rebuilding it", path, err)
    dataset = load_dataset(name, root, **options)
    if _registered(dataset.layout):
        _write_atomic(path, prefix, _dataset_to_arrays(dataset))
    return dataset


def _registered(layout: Layout) -> bool:
    try:
        return get_layout(layout.name) == layout
    except ValueError:
        return False


def _dataset_to_arrays(dataset: SkeletonDataset) -> dict[str, np.ndarray]:
    shapes = np.array([s.joints.shape for s in dataset], dtype=np.int64).reshape(-1, 4)
    flat = (np.concatenate([s.joints.reshape(-1) for s in dataset])
            if len(dataset) else np.zeros(0, np.float32))
    return {
        "name": np.array(dataset.name),
        "layout": np.array(dataset.layout.name),
        "classes": _json(dataset.classes),
        "joints": flat.astype(np.float32, copy=False),
        "shapes": shapes,
        "labels": dataset.labels,
        "meta": _json([s.meta for s in dataset]),
        "skipped": _json([[s.path, s.reason] for s in dataset.skipped]),
    }


def _dataset_from_arrays(arrays: dict[str, np.ndarray]) -> SkeletonDataset:
    shapes, flat = arrays["shapes"], arrays["joints"]
    metas = json.loads(str(arrays["meta"]))
    ends = np.cumsum(shapes.prod(axis=1))
    if len(metas) != len(shapes) or (len(ends) and ends[-1] != flat.size):
        raise ValueError("sample count or joint values do not add up")
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    samples = [
        SkeletonSample(flat[a:b].reshape(tuple(shape)), int(label), meta)
        for a, b, shape, label, meta in zip(starts, ends, shapes, arrays["labels"], metas)
    ]
    return SkeletonDataset(
        name=str(arrays["name"]),
        layout=get_layout(str(arrays["layout"])),
        classes=json.loads(str(arrays["classes"])),
        samples=samples,
        skipped=[SkippedFile(p, r) for p, r in json.loads(str(arrays["skipped"]))],
    )


# ---------------------------------------------------------------------- preprocessed arrays

@dataclass
class Prepared:
    """Model input of one data set with what partitioners and reports need beside it."""

    x: np.ndarray                 # float32 [N, 3, T, V, M]
    y: np.ndarray                 # int64 [N]
    meta: list[dict[str, Any]]    # per sample: subject, view, attributes, source, ...
    classes: list[str]
    layout: str
    skipped: list[SkippedFile] = field(default_factory=list)
    from_cache: bool = False


def prepare(name: str, root: str | Path | None, config: PreprocessConfig | None = None, *,
            directory: str | Path | None = None, refresh: bool = False,
            **options: Any) -> Prepared:
    """Preprocessed arrays of a data set, from the cache when sources, options, config and
    code are unchanged. Without ``root`` (``synthetic``) nothing is cached."""
    config = config or PreprocessConfig()
    if root is None:
        return _prepare(load_dataset(name, None, **options), config)
    root = Path(root)
    path, prefix = _entry_path("arrays", name, root,
                               {"options": options, "config": config.to_dict()},
                               Path(directory) if directory else None)
    arrays = None if refresh else read_cached_arrays(path)
    if arrays is not None:
        try:
            return Prepared(
                x=arrays["x"], y=arrays["y"], meta=json.loads(str(arrays["meta"])),
                classes=json.loads(str(arrays["classes"])), layout=str(arrays["layout"]),
                skipped=[SkippedFile(p, r) for p, r in json.loads(str(arrays["skipped"]))],
                from_cache=True,
            )
        except (KeyError, ValueError) as err:
            log.warning("cache entry %s is inconsistent (%s); rebuilding it", path, err)
    dataset = cached_dataset(name, root, directory=directory, refresh=refresh, **options)
    prepared = _prepare(dataset, config)
    _write_atomic(path, prefix, {
        "x": prepared.x, "y": prepared.y, "meta": _json(prepared.meta),
        "classes": _json(prepared.classes), "layout": np.array(prepared.layout),
        "skipped": _json([[s.path, s.reason] for s in prepared.skipped]),
    })
    return prepared


def _prepare(dataset: SkeletonDataset, config: PreprocessConfig) -> Prepared:
    x, y = to_arrays(dataset, config)
    return Prepared(x, y, [dict(s.meta) for s in dataset], list(dataset.classes),
                    dataset.layout.name, list(dataset.skipped))


def cached_arrays(name: str, root: str | Path | None, config: PreprocessConfig | None = None,
                  **options: Any) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """``(x [N, 3, T, V, M], y [N], meta per sample)`` through the cache; see :func:`prepare`."""
    prepared = prepare(name, root, config, **options)
    return prepared.x, prepared.y, prepared.meta
