"""What every reader shares: the format error, parsing of numbers with line numbers,
and loading a folder of files where a bad file either stops the load or is recorded.

A reader never drops a file quietly: with ``on_error="skip"`` each refused file becomes
a :class:`~skeletons.sample.SkippedFile` on the data set, and the count and names are
logged, so a user can see what was left out and why.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np

from skeletons.sample import SkeletonSample, SkippedFile

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class SkeletonFormatError(ValueError):
    """A skeleton file that cannot be read: the message names the file and the line or field."""

    def __init__(self, path: str | Path, what: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {what}")


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")


def parse_name(path: Path, pattern: re.Pattern[str], expected: str) -> re.Match[str]:
    """Match a file name against the data set's naming scheme or say what was expected."""
    match = pattern.fullmatch(path.name)
    if match is None:
        raise SkeletonFormatError(path, f"file name does not follow {expected}", field="file name")
    return match


def read_text(path: Path) -> str:
    """The file's text; undecodable bytes become a format error naming the file."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SkeletonFormatError(path, f"not UTF-8 text (byte {err.start})") from None


def parse_number_lines(
    path: Path, lines: Sequence[str], width: int, first_line: int = 1
) -> np.ndarray:
    """Parse lines of ``width`` whitespace-separated numbers into float32 ``[len(lines), width]``.

    The fast path splits everything at once; only when that fails are the lines walked one
    by one to name the first bad one (1-based ``first_line`` is the number of ``lines[0]``).
    """
    tokens = " ".join(lines).split()
    if len(tokens) == width * len(lines):
        try:
            with np.errstate(over="ignore"):  # overflow shows as inf, reported below
                values = np.array(tokens, dtype=np.float32)
        except ValueError:
            values = None
        if values is not None and not np.isinf(values).any():
            return values.reshape(len(lines), width)
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != width:
            raise SkeletonFormatError(
                path, f"expected {width} numbers, found {len(parts)}", line=first_line + i
            )
        for k, part in enumerate(parts):
            check_number(path, part, f"value {k + 1}", line=first_line + i)
    raise SkeletonFormatError(path, "numbers could not be read", line=first_line)


def check_number(path: Path, text: str, what: str, line: int | None = None,
                 field: str | None = None) -> float:
    """One value as a float; text that is not a number, or is infinite, is a format error.

    NaN is accepted: it marks a joint the sensor lost, which preprocessing fills in.
    """
    try:
        value = float(text)
    except ValueError:
        raise SkeletonFormatError(path, f"{what} is not a number: {text!r}", line, field) from None
    if np.isinf(value) or abs(value) > _FLOAT32_MAX:
        raise SkeletonFormatError(path, f"{what} is infinite or too large: {text!r}", line, field)
    return value


def load_files(
    paths: Iterable[Path],
    read_one: Callable[[Path], SkeletonSample],
    on_error: str,
    what: str,
) -> tuple[list[SkeletonSample], list[SkippedFile]]:
    """Read every path; on a bad file raise or record it, depending on ``on_error``."""
    check_on_error(on_error)
    samples: list[SkeletonSample] = []
    skipped: list[SkippedFile] = []
    for path in paths:
        try:
            samples.append(read_one(path))
        except (SkeletonFormatError, OSError) as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(str(path), str(err)))
    if skipped:
        log.warning(
            "%s: skipped %d file(s): %s", what, len(skipped), "; ".join(s.reason for s in skipped)
        )
    return samples, skipped


def find_files(root: Path, patterns: Sequence[str], what: str) -> list[Path]:
    """Files under ``root`` matching any glob pattern, sorted; a clear error when none match."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: folder {root} does not exist")
    found = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    if not found:
        raise FileNotFoundError(
            f"{what}: no files matching {', '.join(patterns)} under {root}"
        )
    return found
