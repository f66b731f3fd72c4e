"""Shared test fixtures: where the real data sets are, and a skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``$FEDSAR_DATA_ROOT`` if set, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("FEDSAR_DATA_ROOT")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding nw-ucla/, msr-action3d/, kinder-gator/; skips when absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real skeleton data not found at {root} (set FEDSAR_DATA_ROOT)")
    return root


def dataset_dir(data_root: Path, name: str) -> Path:
    path = data_root / name
    if not path.is_dir():
        pytest.skip(f"data set folder {path} is absent")
    return path
