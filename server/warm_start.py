"""Start a federation from a saved global model instead of a fresh one.

A coordinator may begin from the ``global.npz`` of an earlier run, e.g. a backbone
trained on public or synthetic data, so that the sites' private (and, under DP-SGD,
noisy) training starts from useful features. Only the parameters the new run shares
are taken, and only where name and shape agree: a classifier for another label set
or a block of another width keeps its fresh initialization, and the log names it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

from skeletons.atomic import read_arrays

log = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """The initial model cannot be used: missing, unreadable, or sharing nothing."""


def initial_model_file(spec: str | Path) -> Path:
    """``global.npz`` itself, or a ``fedsar-sim run --out`` folder holding one."""
    path = Path(spec)
    if path.is_dir():
        path = path / "global.npz"
    if not path.is_file():
        raise WarmStartError(f"initial-model {spec}: no such file (give a global.npz or the folder holding it)")
    return path


def warm_start(fresh: ArrayRecord, spec: str | Path) -> tuple[ArrayRecord, list[str]]:
    """``fresh`` with every parameter the saved model has under the same name and shape
    replaced by the saved value; returns the record and the names kept fresh
    (:func:`log_warm_start` reports them)."""
    path = initial_model_file(spec)
    try:
        saved = read_arrays(path)
    except (OSError, ValueError) as err:
        raise WarmStartError(f"initial-model {path}: cannot read it ({err})") from None
    out: "OrderedDict[str, Array]" = OrderedDict()
    kept_fresh: list[str] = []
    for key, ref in fresh.items():
        value = saved.get(key)
        if value is not None and tuple(value.shape) == tuple(ref.shape):
            out[key] = Array(np.ascontiguousarray(value, dtype=ref.numpy().dtype))
        else:
            out[key] = ref
            kept_fresh.append(key)
    if len(kept_fresh) == len(fresh) and len(fresh) > 0:
        raise WarmStartError(
            f"initial-model {path}: none of its {len(saved)} arrays matches a shared parameter of this model "
            f"by name and shape (another layout or network?)"
        )
    return ArrayRecord(out), kept_fresh


def log_warm_start(spec: str | Path, arrays: ArrayRecord, kept_fresh: list[str]) -> None:
    """Say what a run took from its initial model (the run's caller logs, a check does not)."""
    log.info("initial model %s: %d of %d shared parameters loaded; kept fresh: %s",
             initial_model_file(spec), len(arrays) - len(kept_fresh), len(arrays), ", ".join(kept_fresh) or "none")


# Kinds FSAR keeps on the sites: a warm start from an fsar run cannot hold them, and their
# fresh values (a small random unique topology, weights of 1) are where FSAR starts every
# site, so a strategy that shares them may start from them too.
_FRESH_BY_DESIGN = frozenset({"unique", "topology_scalar"})


def check_frozen_loaded(kept_fresh: list[str], frozen_blocks: int, spec: str | Path) -> None:
    """Refuse a warm start that leaves a frozen feature parameter fresh: no site would ever
    train it, so the federation would classify from random features."""
    from models.roles import is_frozen, parameter_kind

    frozen_fresh = [key for key in kept_fresh
                    if is_frozen(key, frozen_blocks) and parameter_kind(key) not in _FRESH_BY_DESIGN]
    if frozen_fresh:
        shown = ", ".join(frozen_fresh[:4]) + (f" and {len(frozen_fresh) - 4} more" if len(frozen_fresh) > 4 else "")
        raise WarmStartError(
            f"initial-model {spec}: frozen-blocks = {frozen_blocks} freezes {shown}, but the file holds no "
            f"value of that name and shape for them, so they would stay random (a model of another layout "
            f"or width? lower frozen-blocks or give a matching model)"
        )
