"""Commands that default to ``--threads 0`` take the cores the load leaves idle."""

from __future__ import annotations

import os

import pytest

from skeletons.clikit import free_threads


@pytest.mark.parametrize("cores, load, expected", [(2, 0.1, 2), (2, 0.9, 2), (2, 1.2, 1), (2, 3.0, 1), (16, 4.4, 12), (4, 0.0, 4)])
def test_threads_follow_idle_cores(monkeypatch, cores, load, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert free_threads(0) == expected
    assert free_threads(3) == 3  # an explicit number is taken as given
