"""A site's privacy ledger: the DP accountant's state, kept across rounds and restarts.

Every DP-SGD step a site takes is a subsampled Gaussian mechanism; its privacy loss
composes over the whole life of the site's data, not per round. The ledger holds the
Opacus accountant's history (``(noise_multiplier, sample_rate, steps)`` entries, the
same thing ``IAccountant.state_dict()`` holds), one line per round trained or declined,
and the noise plan of the current run. It lives on the site's disk as JSON, written
atomically under a lock, and in simulation inside ``Context.state``.

A round's steps are *reserved* (written down) before training starts, so a crash in the
middle of a round can only over-count what was spent, never under-count it.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Protocol

from skeletons.atomic import atomic_path

FORMAT = "fedsar-privacy-ledger"
VERSION = 1
MECHANISMS = ("rdp", "prv")
STATE_KEY = "privacy-ledger"

History = list[tuple[float, float, int]]


class LedgerError(ValueError):
    """A ledger file or record that cannot be read; the message names it and the field."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- accounting

def make_accountant(mechanism: str, history: History | None = None):
    """An Opacus accountant of ``mechanism`` holding ``history``."""
    from opacus.accountants import create_accountant

    if mechanism not in MECHANISMS:
        raise ValueError(f"accountant {mechanism!r} unknown; choose from {', '.join(MECHANISMS)}")
    accountant = create_accountant(mechanism=mechanism)
    if history:
        accountant.load_state_dict({"history": [tuple(h) for h in history], "mechanism": mechanism})
    return accountant


def epsilon_of(history: History, mechanism: str, delta: float) -> float:
    """Epsilon at ``delta`` of everything in ``history`` composed (0 when empty).

    The same number Opacus's accountant gives. For RDP the per-step RDP curve of each
    ``(noise_multiplier, sample_rate)`` is computed once and scaled by the step count
    (RDP composes additively, and Opacus computes ``steps * rdp`` too), which makes the
    many budget checks of a site cheap.
    """
    if not history:
        return 0.0
    if mechanism == "rdp":
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as analysis

        rdp = sum(_rdp_per_step(float(q), float(z)) * int(n) for z, q, n in history)
        eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    return _epsilon_cached(tuple((float(z), float(q), int(n)) for z, q, n in history), mechanism, float(delta))


@lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> Any:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    return analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                orders=RDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=256)
def _epsilon_cached(history: tuple[tuple[float, float, int], ...], mechanism: str, delta: float) -> float:
    return float(make_accountant(mechanism, list(history)).get_epsilon(delta=delta))


def compose(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """``history`` plus ``steps`` more steps, merged into the last entry when it matches
    (as Opacus's own ``step`` does, so a long run stays one entry)."""
    out = [tuple(h) for h in history]
    if steps <= 0:
        return out  # type: ignore[return-value]
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        z, q, n = out.pop()
        out.append((z, q, int(n) + int(steps)))
    else:
        out.append((float(noise_multiplier), float(sample_rate), int(steps)))
    return out  # type: ignore[return-value]


def total_steps(history: History) -> int:
    return int(sum(int(h[2]) for h in history))


# ------------------------------------------------------------------------------ stores

class LedgerStore(Protocol):
    """Where a ledger's JSON text lives."""

    where: str

    def read(self) -> str | None: ...

    def write(self, text: str) -> None: ...

    def lock(self) -> Any: ...


class FileStore:
    """A JSON file on the site's disk, replaced atomically, changed under an flock so two
    processes of one site (two runs at once) cannot both spend the same budget."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def read(self) -> str | None:
        return self.path.read_text() if self.path.exists() else None

    def write(self, text: str) -> None:
        with atomic_path(self.path, mode=0o600) as tmp:
            tmp.write_text(text)

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class ContextStore:
    """The ledger inside a Flower ``Context.state`` (one ConfigRecord holding the JSON)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.where = f"Context.state[{STATE_KEY!r}]"

    def read(self) -> str | None:
        record = self.context.state.config_records.get(STATE_KEY)
        return None if record is None else str(record["json"])

    def write(self, text: str) -> None:
        from flwr.app import ConfigRecord

        self.context.state[STATE_KEY] = ConfigRecord({"json": text})

    @contextmanager
    def lock(self) -> Iterator[None]:
        yield


class MirroredStore:
    """The disk file is the truth; ``Context.state`` carries a copy for the run."""

    def __init__(self, primary: LedgerStore, *copies: LedgerStore) -> None:
        self.primary = primary
        self.copies = copies
        self.where = primary.where

    def read(self) -> str | None:
        return self.primary.read()

    def write(self, text: str) -> None:
        self.primary.write(text)
        for store in self.copies:
            store.write(text)

    def lock(self) -> Any:
        return self.primary.lock()


# ------------------------------------------------------------------------------ ledger

@dataclass
class PrivacyLedger:
    """The accountant's history of one site plus what each round spent or why it declined."""

    mechanism: str = "rdp"
    delta: float = 1e-5
    site: str = ""
    target_epsilon: float | None = None
    history: History = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)
    releases: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    updated: str = ""
    where: str = ""

    # -- accounting ---------------------------------------------------------------
    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (the ledger's delta by default)."""
        return epsilon_of(self.history, self.mechanism, self.delta if delta is None else delta)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon if ``steps`` more steps of the given mechanism were spent now."""
        return epsilon_of(compose(self.history, noise_multiplier, sample_rate, steps), self.mechanism, self.delta)

    def accountant(self):
        """A fresh Opacus accountant holding this ledger's history."""
        return make_accountant(self.mechanism, self.history)

    @property
    def steps(self) -> int:
        """DP-SGD steps composed so far (the history less the releases)."""
        return total_steps(self.history) - sum(int(r.get("releases", 0)) for r in self.releases)

    def remaining(self) -> float | None:
        """Epsilon left under the target (None when there is no target)."""
        if self.target_epsilon is None:
            return None
        return max(0.0, self.target_epsilon - self.epsilon())

    # -- changes ------------------------------------------------------------------
    def reserve(self, run: str, server_round: int, noise_multiplier: float, sample_rate: float,
                steps: int, max_grad_norm: float) -> dict[str, Any]:
        """Write down a round's steps before it trains; returns the round's entry."""
        self.history = compose(self.history, noise_multiplier, sample_rate, steps)
        entry = {
            "run": run, "round": int(server_round), "status": "reserved", "steps": int(steps),
            "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate),
            "max_grad_norm": float(max_grad_norm), "epsilon": self.epsilon(), "at": now(),
        }
        self.rounds.append(entry)
        return entry

    def settle(self, run: str, server_round: int, steps_taken: int) -> dict[str, Any]:
        """Mark a reserved round done. Steps beyond the reservation are added; fewer steps
        than reserved keep the reservation (the bound stays an upper bound)."""
        entry = self._entry(run, server_round)
        extra = int(steps_taken) - int(entry["steps"])
        if extra > 0:
            self.history = compose(self.history, entry["noise_multiplier"], entry["sample_rate"], extra)
            entry["steps"] = int(steps_taken)
        entry.update(status="done", steps_taken=int(steps_taken), epsilon=self.epsilon(), at=now())
        return entry

    def release(self, run: str, server_round: int, what: str, noise_multiplier: float, count: int,
                clip: float) -> dict[str, Any]:
        """Write down ``count`` Gaussian releases of the whole training split (sample rate 1),
        e.g. the statistics branch's scale, so that they compose with every DP-SGD step."""
        self.history = compose(self.history, noise_multiplier, 1.0, count)
        entry = {
            "run": run, "round": int(server_round), "what": what, "releases": int(count),
            "noise_multiplier": float(noise_multiplier), "clip": float(clip), "epsilon": self.epsilon(), "at": now(),
        }
        self.releases.append(entry)
        return entry

    def decline(self, run: str, server_round: int, reason: str) -> dict[str, Any]:
        entry = {"run": run, "round": int(server_round), "reason": reason, "epsilon": self.epsilon(), "at": now()}
        self.declined.append(entry)
        return entry

    def _entry(self, run: str, server_round: int) -> dict[str, Any]:
        for entry in reversed(self.rounds):
            if entry["run"] == run and entry["round"] == int(server_round):
                return entry
        raise LedgerError(f"{self.where or 'ledger'}: no reserved round {server_round} of run {run!r}")

    # -- (de)serialization --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "site": self.site,
            "accountant": {"mechanism": self.mechanism, "history": [list(h) for h in self.history]},
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "epsilon": self.epsilon(),
            "steps": self.steps,
            "plan": self.plan,
            "rounds": self.rounds,
            "declined": self.declined,
            "releases": self.releases,
            "updated": self.updated,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "ledger") -> "PrivacyLedger":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LedgerError(f"{where}: not JSON ({err})") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Any, where: str = "ledger") -> "PrivacyLedger":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LedgerError(f"{where}: not a fedsar privacy ledger (field 'format' must be {FORMAT!r})")
        if data.get("version") != VERSION:
            raise LedgerError(f"{where}: field 'version' is {data.get('version')!r}, this fedsar reads {VERSION}")
        acc = data.get("accountant")
        if not isinstance(acc, dict) or acc.get("mechanism") not in MECHANISMS:
            raise LedgerError(f"{where}: field 'accountant.mechanism' must be one of {MECHANISMS}")
        history = _read_history(acc.get("history"), where)
        delta = data.get("delta")
        if not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise LedgerError(f"{where}: field 'delta' must be a number in (0, 1), got {delta!r}")
        target = data.get("target_epsilon")
        if target is not None and (not isinstance(target, (int, float)) or not target > 0):
            raise LedgerError(f"{where}: field 'target_epsilon' must be a positive number or null, got {target!r}")
        return cls(
            mechanism=acc["mechanism"], delta=float(delta), site=str(data.get("site", "")),
            target_epsilon=None if target is None else float(target), history=history,
            rounds=list(data.get("rounds") or []), declined=list(data.get("declined") or []),
            releases=list(data.get("releases") or []),
            plan=data.get("plan"), updated=str(data.get("updated", "")), where=where,
        )


def _read_history(raw: Any, where: str) -> History:
    if not isinstance(raw, list):
        raise LedgerError(f"{where}: field 'accountant.history' must be a list")
    history: History = []
    for i, item in enumerate(raw):
        ok = isinstance(item, (list, tuple)) and len(item) == 3
        if ok:
            z, q, n = item
            ok = (isinstance(z, (int, float)) and math.isfinite(z) and z > 0 and isinstance(q, (int, float))
                  and 0 < q <= 1 and isinstance(n, int) and n >= 0)
        if not ok:
            raise LedgerError(
                f"{where}: field 'accountant.history[{i}]' must be [noise_multiplier > 0, sample_rate in (0, 1], steps >= 0], got {item!r}"
            )
        history.append((float(z), float(q), int(n)))
    return history


# ------------------------------------------------------------------------ open, change

def load(store: LedgerStore, *, site: str = "", mechanism: str = "rdp", delta: float = 1e-5) -> PrivacyLedger:
    """The stored ledger, or a new empty one for ``site`` when nothing is stored yet."""
    text = store.read()
    if text is None:
        return PrivacyLedger(mechanism=mechanism, delta=delta, site=site, where=store.where)
    ledger = PrivacyLedger.from_json(text, store.where)
    if ledger.mechanism != mechanism:
        raise LedgerError(
            f"{store.where}: the ledger was kept with the {ledger.mechanism!r} accountant but the site asks for "
            f"{mechanism!r} (dp-accountant); keep {ledger.mechanism!r} or start a new ledger file"
        )
    return ledger


def save(store: LedgerStore, ledger: PrivacyLedger) -> None:
    ledger.updated = now()
    store.write(ledger.to_json())


@contextmanager
def transaction(store: LedgerStore, **defaults: Any) -> Iterator[PrivacyLedger]:
    """Lock, read, let the caller change the ledger, write it back (only on success)."""
    with store.lock():
        ledger = load(store, **defaults)
        yield ledger
        save(store, ledger)


def read_ledger(path: str | Path) -> PrivacyLedger:
    """A ledger file for inspection (``fedsar-privacy budget``); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise LedgerError(f"{p}: no privacy ledger there")
    return PrivacyLedger.from_json(p.read_text(), str(p))
