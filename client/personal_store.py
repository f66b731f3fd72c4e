"""A deployed site's personal parameters on its own disk, across runs and restarts.

During a Flower run the site keeps its personal parameters (unique topology, topology
scalars, its classifier head) in ``Context.state``. That state lives in the SuperNode's
memory and belongs to one run: it is gone when the site restarts and empty when the
coordinator resumes a crashed federation as a new run. So after every local training
the site also writes them here (atomically, ``.npz``), and a run that finds nothing in
``Context.state`` reads them back.

Each save is tagged with the federation and the server round it was trained in. A
read for round ``r`` of federation ``F`` takes the newest save of ``F`` from a round
before ``r``: when the coordinator resumes at round ``k+1`` after a crash, a site that
had already trained round ``k+1`` before the crash starts again from its round-``k``
parameters, exactly as in an uninterrupted run. Without such a save (a new federation,
or a new run of the same one from round 1) the newest save of any federation with the
same model is used, so what a site learned carries over between runs.

A round trained with DP-SGD only starts from saves that were themselves trained with
DP-SGD (tagged ``dp`` in the index). DP-SGD's guarantee assumes a starting point that
depends on the site's data only through releases the ledger accounts for; parameters
fitted without DP on the same sequences (an earlier run without DP) would carry their
information into every update the site sends, outside the budget. Such a round starts
its personal part afresh instead (and refits the statistics scale under DP).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from skeletons.atomic import read_arrays, write_arrays, write_json

log = logging.getLogger(__name__)

INDEX = "index.json"
KEEP = 3


class PersonalStore:
    """Personal parameters of one site, newest saves first in ``index.json``."""

    def __init__(self, folder: str | Path, keep: int = KEEP) -> None:
        self.folder = Path(folder)
        self.keep = keep

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def entries(self) -> list[dict[str, Any]]:
        path = self.folder / INDEX
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("personal parameter index %s unreadable (%s); starting without it", path, err)
            return []
        return list(data.get("entries", []))

    def save(self, arrays: dict[str, np.ndarray], federation: str, server_round: int, model_tag: str,
             dp: bool = False) -> Path:
        """Write one save (``dp``: trained with DP-SGD); the index, written last, commits it."""
        with self._locked():
            entries = self.entries()
            seq = 1 + max((int(e["seq"]) for e in entries), default=0)
            name = f"personal-{seq:06d}.npz"
            write_arrays(self.folder / name, arrays, mode=0o600)
            entries = [e for e in entries if not (e["federation"] == federation and e["round"] == server_round)]
            entries.insert(0, {
                "seq": seq, "file": name, "federation": federation, "round": int(server_round),
                "model": model_tag, "dp": bool(dp), "saved_at": time.time(),
            })
            entries = entries[: self.keep]
            write_json(self.folder / INDEX, {"entries": entries})
            keep = {e["file"] for e in entries}
            for path in self.folder.glob("personal-*.npz"):
                if path.name not in keep:
                    path.unlink(missing_ok=True)
        return self.folder / name

    def choose(self, federation: str, server_round: int, model_tag: str, dp_only: bool = False) -> dict[str, Any] | None:
        """The save a run of ``federation`` at ``server_round`` should start from; with
        ``dp_only`` (a round under DP-SGD) only saves trained with DP-SGD qualify."""
        usable = [e for e in self.entries() if e.get("model") == model_tag and (e.get("dp") or not dp_only)]
        if dp_only and not usable and any(e.get("model") == model_tag for e in self.entries()):
            log.info("personal parameters: the saves on disk were trained without DP-SGD; this round uses DP-SGD, "
                     "so the site starts its personal part afresh")
        same = [e for e in usable if e["federation"] == federation and e["round"] < server_round]
        pool = same or usable
        return max(pool, key=lambda e: e["seq"]) if pool else None

    def load(self, federation: str, server_round: int, model_tag: str,
             dp_only: bool = False) -> dict[str, np.ndarray] | None:
        entry = self.choose(federation, server_round, model_tag, dp_only)
        return self.read(entry) if entry is not None else None

    def read(self, entry: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """The arrays of one save from :meth:`choose`; None when its file is unreadable."""
        try:
            arrays = read_arrays(self.folder / entry["file"])
        except (OSError, ValueError) as err:
            log.warning("personal parameters %s unreadable (%s); the site starts them afresh", entry["file"], err)
            return None
        log.info("personal parameters from %s (federation %r, round %d)", entry["file"], entry["federation"], entry["round"])
        return arrays


def model_tag(config: ConfigRecord) -> str:
    """Saves are only reused by the same model and parameter split."""
    fields = [str(config.get("model-config", "")), str(config.get("layout", "")), str(config.get("policy", ""))]
    shared_blocks = int(config.get("shared-blocks", 0))
    if shared_blocks:  # absent when 0, so saves from before the option stay usable
        fields.append(f"shared-blocks={shared_blocks}")
    text = json.dumps(fields)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_for(context: Context) -> PersonalStore | None:
    """The store of a deployed site (``site-config`` in the node config); None in simulation."""
    path = context.node_config.get("site-config")
    if not path:
        return None
    from client.site_config import load_site_config

    return PersonalStore(load_site_config(str(path)).personal_dir)


def load_personal(context: Context, config: ConfigRecord, evaluating: bool = False) -> ArrayRecord | None:
    """Personal parameters from the site's disk for this round, or None.

    Training round ``r`` starts from a save of an earlier round; evaluating round ``r``
    uses the save of round ``r`` itself when there is one. A save that also holds the
    site's own shared parameters (``global-mix`` below 1) puts them back into
    ``Context.state`` as well, and so does one that holds the site's optimizer state
    (``keep-optimizer-state``), when the save belongs to the same federation.
    """
    from client.global_mix import keep_own_shared, split_saved
    from client.optimizer_state import SAVE_PREFIX, STATE_KEY

    store = store_for(context)
    if store is None:
        return None
    from privacy.dp import dp_requested

    federation = str(config.get("federation", ""))
    server_round = int(config.get("server-round", 0)) + (1 if evaluating else 0)
    entry = store.choose(federation, server_round, model_tag(config), dp_only=dp_requested(context, config))
    arrays = store.read(entry) if entry is not None else None
    if entry is None or arrays is None:
        return None
    optimizer = {k[len(SAVE_PREFIX):]: v for k, v in arrays.items() if k.startswith(SAVE_PREFIX)}
    personal, own = split_saved({k: v for k, v in arrays.items() if not k.startswith(SAVE_PREFIX)})
    if own:
        keep_own_shared(context, _record(own))
    if optimizer and entry["federation"] == federation:  # another run's steps do not carry over
        context.state[STATE_KEY] = _record(optimizer)
    return _record(personal)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def save_personal(context: Context, config: ConfigRecord, personal: ArrayRecord,
                  own: ArrayRecord | None = None, optimizer: ArrayRecord | None = None) -> None:
    """Write the personal parameters just trained, with ``own`` the site's own shared
    parameters and with ``optimizer`` its optimizer state, to the site's disk (no-op in
    simulation)."""
    from client.global_mix import OWN_PREFIX
    from client.optimizer_state import SAVE_PREFIX

    store = store_for(context)
    if store is None:
        return
    arrays = {k: v.numpy() for k, v in personal.items()}
    arrays.update({OWN_PREFIX + k: v.numpy() for k, v in (own or {}).items()})
    arrays.update({SAVE_PREFIX + k: v.numpy() for k, v in (optimizer or {}).items()})
    from privacy.dp import dp_requested

    store.save(arrays, str(config.get("federation", "")), int(config.get("server-round", 0)), model_tag(config),
               dp=dp_requested(context, config))
