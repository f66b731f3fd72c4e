"""Atomic file writes: a crash leaves either the old file or the new one, never half.

Checkpoints, privacy ledgers, personal parameters and results all go through here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if mode is not None:
            os.chmod(tmp_path, mode)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Any, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_report(path: str | Path | None, report: Any) -> None:
    """A command's JSON report at ``path`` (atomically), if one was asked for, and where it went."""
    if path:
        write_json(path, report)
        print(f"wrote {path}")


def write_arrays(path: str | Path, arrays: Mapping[str, np.ndarray], mode: int | None = None) -> None:
    """Save named arrays as ``.npz`` (no pickle), atomically."""
    with atomic_path(path, mode) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Load arrays written by :func:`write_arrays`; object arrays are refused."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_cached_arrays(path: str | Path) -> dict[str, np.ndarray] | None:
    """A cache file's arrays, or None when it is absent or unreadable (a file cut short,
    not an npz): the caller rebuilds it, so it is a warning, not an error."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_arrays(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        log.warning("cache entry %s is unreadable (%s); rebuilding it", path, err)
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
