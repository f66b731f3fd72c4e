"""Round checkpoints of the coordinator: save after every round, resume after a crash.

A checkpoint is the global model (the shared parameters), the strategy's own state
(FedAvgM's momentum, when server momentum is on) and the round history, written as
``.npz`` arrays plus one JSON file, with no pickle. The JSON file is written last and
names the array files it belongs to, so it is the commit point: a crash while writing
leaves the previous checkpoint intact.

``--resume`` starts a new Flower run that loads the last checkpoint and continues
with the next round; finished rounds are not repeated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from server.settings import RunSettings, describe_changes, settings_changes
from server.status import build_status, write_status
from skeletons.atomic import read_arrays, write_arrays, write_json
from strategies.screening import RoundRecord

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "checkpoint.json"
KEEP = 2
# Settings that must not change between a checkpoint and its resumption (manifests that
# predate "settings" hold only these).
PINNED = ("scenario", "strategy", "seed", "model_preset", "server_momentum")
# Run-config keys a resumed run may change: more rounds, and how the run is operated
# (where files go, how long a round waits, how often it evaluates); every other key
# shapes the training and is pinned.
MAY_CHANGE_ON_RESUME = frozenset({
    "num-server-rounds", "timeout-s", "min-sites", "eval-every", "eval-trained", "device", "data-root",
    "paths-file", "out-dir", "checkpoint-dir", "status-file", "resume", "federation",
})


def changed_settings(manifest: dict[str, Any], settings: RunSettings) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between a checkpoint's manifest and a run resuming it:
    ``{key: (then, now)}`` over every key the run may not change."""
    saved = manifest.get("settings")
    if saved is None:  # an older manifest: its pinned fields only
        pinned = manifest.get("pinned", {})
        return {k: (pinned.get(k), v) for k, v in _pinned(settings).items() if k in pinned and pinned[k] != v}
    return settings_changes(saved, settings.to_run_config(), MAY_CHANGE_ON_RESUME)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or belongs to a different run; the message says which."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint."""

    round: int
    arrays: "OrderedDict[str, np.ndarray]"
    strategy_arrays: dict[str, np.ndarray]
    history: list[RoundRecord]
    manifest: dict[str, Any]


def _round_file(round_: int, what: str) -> str:
    return f"round-{round_:05d}-{what}.npz"


def strategy_state(strategy: Any, keys: list[str]) -> dict[str, np.ndarray]:
    """Arrays of the strategy's own state: FedAvgM's momentum vector when it has one."""
    out: dict[str, np.ndarray] = {}
    momentum = getattr(strategy, "momentum_vector", None)
    if momentum is not None:
        if len(momentum) != len(keys):
            raise CheckpointError(f"momentum has {len(momentum)} arrays for {len(keys)} parameters")
        for key, value in zip(keys, momentum):
            out[f"momentum/{key}"] = np.asarray(value)
    return out


def restore_strategy_state(strategy: Any, arrays: dict[str, np.ndarray], keys: list[str]) -> None:
    """Put saved strategy state back (the inverse of :func:`strategy_state`)."""
    if any(k.startswith("momentum/") for k in arrays):
        missing = [k for k in keys if f"momentum/{k}" not in arrays]
        if missing:
            raise CheckpointError(f"checkpoint momentum lacks {missing[:3]}")
        strategy.momentum_vector = [arrays[f"momentum/{k}"] for k in keys]


def history_to_json(history: list[RoundRecord]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in history]


def history_from_json(raw: list[dict[str, Any]]) -> list[RoundRecord]:
    known = {f.name for f in dataclasses.fields(RoundRecord)}
    return [RoundRecord(**{k: v for k, v in r.items() if k in known}) for r in raw]


def changed_message(manifest_path: Path, changed: dict[str, tuple[Any, Any]]) -> str:
    return (f"checkpoint {manifest_path} was written with other settings ({describe_changes(changed)}); "
            f"a resumed run may change "
            f"only num-server-rounds and how it is operated, or start afresh with --new-run")


def _pinned(settings: RunSettings) -> dict[str, Any]:
    return {k: getattr(settings, k) for k in PINNED}


class RoundCheckpoints:
    """Checkpoints in one folder: ``save`` after a round, ``load`` the latest."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def latest_round(self) -> int | None:
        if not self.exists():
            return None
        try:
            return int(json.loads(self.manifest_path.read_text())["round"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None

    def save(self, server_round: int, arrays: ArrayRecord, strategy: Any, settings: RunSettings) -> None:
        """Write the round's checkpoint; the manifest goes last and commits it."""
        keys = list(arrays.keys())
        global_file = _round_file(server_round, "global")
        state_file = _round_file(server_round, "strategy")
        write_arrays(self.folder / global_file, {k: v.numpy() for k, v in arrays.items()})
        write_arrays(self.folder / state_file, strategy_state(strategy, keys))
        history = list(getattr(strategy, "history", []))
        write_json(self.manifest_path, {
            "format": FORMAT,
            "round": server_round,
            "global": global_file,
            "strategy_state": state_file,
            "keys": keys,
            "pinned": _pinned(settings),
            "settings": settings.to_run_config(),
            "history": history_to_json(history),
            "written_at": time.time(),
        })
        self._prune(server_round)

    def _prune(self, server_round: int) -> None:
        keep = {_round_file(r, w) for r in range(server_round - KEEP + 1, server_round + 1) for w in ("global", "strategy")}
        for path in self.folder.glob("round-*.npz"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def manifest(self) -> dict[str, Any]:
        """The latest checkpoint's manifest (round, settings), without its arrays."""
        path = self.manifest_path
        if not path.is_file():
            raise CheckpointError(f"no checkpoint in {self.folder} (expected {path})")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint manifest {path} cannot be read: {err}") from None
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path}: format {manifest.get('format')!r}, expected {FORMAT}")
        return manifest

    def load(self) -> Checkpoint:
        """The latest committed checkpoint; errors name the file and what is wrong."""
        path = self.manifest_path
        manifest = self.manifest()
        try:
            raw = read_arrays(self.folder / manifest["global"])
            state = read_arrays(self.folder / manifest["strategy_state"])
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {path}: array file missing or corrupt ({err})") from None
        keys = list(manifest["keys"])
        if set(keys) != set(raw):
            raise CheckpointError(f"checkpoint {path}: global model arrays do not match the listed keys")
        arrays = OrderedDict((k, raw[k]) for k in keys)
        return Checkpoint(int(manifest["round"]), arrays, state, history_from_json(manifest.get("history", [])), manifest)


def resumes(run_config: Mapping[str, Any]) -> bool:
    """Whether the run config (``resume``, set by ``fedsar-server start --resume``) continues a checkpoint."""
    return str(run_config.get("resume", "false")).lower() in ("true", "1", "yes")


class DeploymentHooks:
    """What the deployed coordinator adds to a federated run: checkpoints, resume, status.

    Enabled by the run-config keys ``checkpoint-dir`` (and ``resume``, ``status-file``)
    that ``fedsar-server start`` writes; simulations do not set them.
    """

    def __init__(self, settings: RunSettings, checkpoint_dir: str, resume: bool, status_file: str | None) -> None:
        self.settings = settings
        self.checkpoints = RoundCheckpoints(checkpoint_dir)
        self.resume = resume
        self.status_file = Path(status_file) if status_file else None
        self.first_round = 1
        self.started = time.time()

    @classmethod
    def from_settings(cls, settings: RunSettings) -> "DeploymentHooks | None":
        extra = settings.extra
        folder = str(extra.get("checkpoint-dir", "") or "")
        if not folder:
            return None
        resume = resumes(extra)
        return cls(settings, folder, resume, str(extra.get("status-file", "") or "") or None)

    def start(self, strategy: Any, arrays: ArrayRecord) -> tuple[int, ArrayRecord]:
        """(first round to run, global arrays to start from); restores state when resuming."""
        if not self.resume:
            if self.checkpoints.exists():
                raise CheckpointError(
                    f"{self.checkpoints.folder} already holds a checkpoint (round {self.checkpoints.latest_round()}); "
                    "resume it (fedsar-server start --resume) or set it aside (--new-run) to start afresh"
                )
            self._status(strategy, "running")
            return 1, arrays
        checkpoint = self.checkpoints.load()
        changed = changed_settings(checkpoint.manifest, self.settings)
        if changed:
            raise CheckpointError(changed_message(self.checkpoints.manifest_path, changed))
        for key, ref in arrays.items():
            got = checkpoint.arrays.get(key)
            if got is None or tuple(got.shape) != tuple(ref.shape):
                raise CheckpointError(
                    f"checkpoint {self.checkpoints.manifest_path}: parameter {key!r} is "
                    f"{None if got is None else tuple(got.shape)}, the model expects {tuple(ref.shape)}"
                )
        restored = ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in checkpoint.arrays.items()))
        restore_strategy_state(strategy, checkpoint.strategy_arrays, list(checkpoint.arrays))
        if hasattr(strategy, "history"):
            strategy.history = checkpoint.history
        self.first_round = checkpoint.round + 1
        log.info("resuming after round %d from %s", checkpoint.round, self.checkpoints.manifest_path)
        self._status(strategy, "running")
        return self.first_round, restored

    def round_end(self, server_round: int, arrays: ArrayRecord, strategy: Any) -> None:
        self.checkpoints.save(server_round, arrays, strategy, self.settings)
        self._status(strategy, "running")

    def finish(self, strategy: Any) -> None:
        self._status(strategy, "completed")

    def fail(self, strategy: Any, error: BaseException) -> None:
        self._status(strategy, "failed", f"{type(error).__name__}: {error}")

    def _status(self, strategy: Any, state: str, error: str | None = None) -> None:
        if self.status_file is None:
            return
        history = list(getattr(strategy, "history", []))
        write_status(self.status_file, build_status(state, self.settings, history, self.first_round, self.started, error))
