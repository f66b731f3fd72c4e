"""Training on cached features when everything below the head is frozen.

Why: in the private recipe (``frozen-blocks`` = every block, the statistics branch) a
site trains only the statistics projection and the head, yet every step ran the whole
frozen backbone again, twice with multi-grain distillation, on sequences that never
change (no augmentation). Here the backbone runs once: each training sequence becomes
a row of the pooled feature the head reads, its standardized statistics and, per
distillation grain, the pooled feature of the global model's blocks up to the grain
carried through the site's later blocks. The head then trains on those rows, and the
rows are reused in later rounds while the sequences and the weights below the head stay
bit for bit the same (the coordinator keeps unanimous arrays exact for that).

The trained parameters are the network's own (the wrappers hold the same modules under
the same names), each step computes the same loss on the same samples, and DP-SGD
samples, clips and accounts exactly as on the sequences: only the repeated frozen
computation is gone.

A site that augments its sequences may cache too when its recipe asks for a pool of
views (``augment-pool`` = P): each sequence is augmented P times once, with a seed that
stays the same across rounds, and each step then draws one cached view per sample
instead of a fresh transform. Each view depends only on its own sequence, so DP-SGD's
per-sample guarantee is unchanged; what changes is that the augmentations repeat.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from client.augment import Augmentation, augment
from models.network import FSARNet, classify

log = logging.getLogger(__name__)

HEAD_MODULES = ("statistics", "head")  # what the cached rows still pass through


def trains_head_only(network: nn.Module) -> bool:
    """Whether the only trainable parameters are the head and, if the model has one, the
    statistics projection (the statistics themselves come from fixed buffers)."""
    trainable = [name for name, p in network.named_parameters() if p.requires_grad]
    return bool(trainable) and all(name.split(".")[0] in HEAD_MODULES for name in trainable)


def can_cache(network: nn.Module, recipe: Any) -> bool:
    """Whether a round may train on cached features: an FSARNet that trains only its head
    (and statistics projection) on sequences that are not augmented (an augmented copy
    differs at every step) or that draw their augmentations from a pool of views."""
    return (isinstance(network, FSARNet) and trains_head_only(network)
            and (not augments(recipe) or recipe.augment_pool > 0))


def augments(recipe: Any) -> bool:
    """Whether a recipe (``client.trainer.TrainConfig``) transforms its sequences."""
    return recipe.augmentation.active or recipe.augment_multiplicity > 1


@dataclass(frozen=True)
class ViewPool:
    """``count`` augmented views of every sequence, drawn once from ``seed`` (the site's
    run seed, so that later rounds find the same views in the cache)."""

    augmentation: Augmentation
    count: int
    seed: int

    def views(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The views one at a time (only one augmented copy of the data is held at once)."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.count):
            yield augment(x, self.augmentation, gen)


@dataclass(frozen=True)
class Rows:
    """Where each part sits in a cached row: ``[pooled | statistics | grain g1 | g2 ...]``,
    pooled and grain features ``feature_dim`` wide, statistics ``stats_dim`` wide."""

    feature_dim: int
    stats_dim: int
    grains: tuple[int, ...] = ()

    @classmethod
    def of(cls, network: FSARNet, grains: tuple[int, ...] = ()) -> "Rows":
        """The rows of ``network``: its pooled feature, its statistics (if it has the branch)."""
        stats_dim = network.statistics.dim if network.statistics is not None else 0
        return cls(network.feature_dim, stats_dim, grains)

    @property
    def width(self) -> int:
        return self.feature_dim * (1 + len(self.grains)) + self.stats_dim

    def pooled(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[:, :self.feature_dim]

    def statistics(self, rows: torch.Tensor) -> torch.Tensor | None:
        return rows[:, self.feature_dim:self.feature_dim + self.stats_dim] if self.stats_dim else None

    def grain(self, rows: torch.Tensor, grain: int) -> torch.Tensor:
        try:
            start = self.feature_dim + self.stats_dim + self.feature_dim * self.grains.index(grain)
        except ValueError:
            raise ValueError(f"no cached features for grain {grain}; cached: {list(self.grains)}") from None
        return rows[:, start:start + self.feature_dim]


class CachedHead(nn.Module):
    """The network's head on cached rows (:class:`Rows`).

    It holds the network's own ``statistics``, ``dropout`` and ``head`` modules under the
    network's names, so its parameters, their names (optimizer state, proximal pairs)
    and its updates are the network's. It also answers what the trainer's distillation
    asks of a student: ``num_blocks``, ``input_statistics`` and ``forward_from``.
    """

    def __init__(self, network: FSARNet, rows: Rows) -> None:
        super().__init__()
        self.statistics = network.statistics
        self.dropout = network.dropout
        self.head = network.head
        self.rows = rows
        self.num_blocks = network.num_blocks

    def input_statistics(self, rows: torch.Tensor) -> torch.Tensor | None:
        return self.rows.statistics(rows)

    def forward_from(self, pooled: torch.Tensor, start_block: int,
                     statistics: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from a grain's cached pooled feature (:class:`CachedTeacher` hands it
        over: the site's blocks after the grain were applied when the rows were built)."""
        return classify(pooled, statistics, self.statistics, self.dropout, self.head)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return classify(self.rows.pooled(rows), self.rows.statistics(rows),
                        self.statistics, self.dropout, self.head)


class CachedTeacher(nn.Module):
    """Stands in for the frozen global teacher: a grain's ``block_features`` are the
    row's cached pooled feature of that grain."""

    def __init__(self, rows: Rows) -> None:
        super().__init__()
        self.rows = rows

    def block_features(self, rows: torch.Tensor, upto: int, shared_topology_only: bool = True) -> torch.Tensor:
        if not shared_topology_only:
            raise ValueError("the cached teacher features were computed with the shared topology only")
        return self.rows.grain(rows, upto)


def rows_key(network: FSARNet, x: torch.Tensor, teacher: FSARNet | None, grains: tuple[int, ...],
             device: torch.device, pool: ViewPool | None = None) -> str:
    """A digest of everything the rows depend on: the sequences, every parameter and
    buffer of the site's network and of the teacher except the head's and the statistics
    projection's parameters (which no row passes through), the grains, the device and
    the pool of views."""
    digest = hashlib.sha256(repr((grains, str(device), tuple(x.shape), str(x.dtype), pool)).encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    models = [("site", network)] + ([("teacher", teacher)] if teacher is not None and grains else [])
    for tag, model in models:
        head_params = {name for name, _ in model.named_parameters() if name.split(".")[0] in HEAD_MODULES}
        for name, value in model.state_dict().items():
            if name not in head_params:
                digest.update(f"{tag}:{name}:{tuple(value.shape)}".encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# The last rows computed in this process: with every block frozen the backbone is the same
# every round, so a simulated site (or a daemon) computes its rows once, not per round.
_RECENT_ROWS: OrderedDict[str, torch.Tensor] = OrderedDict()
RECENT_ROWS_BYTES = 256 * 2**20  # a site's rows take 1-2 MB (a pool P times that); the oldest go first


def cached_rows(network: FSARNet, x: Any, teacher: FSARNet | None, grains: tuple[int, ...],
                device: torch.device, pool: ViewPool | None = None, store: Path | None = None) -> torch.Tensor:
    """:func:`compute_rows`, reused while the sequences and the frozen weights are the
    same: ``[N, D]``, or ``[N, P, D]`` for a pool of P views of each sequence. ``store``
    (a deployed site's folder) keeps them on disk too, for a site whose every message
    runs in a new process."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x
    key = rows_key(network, x, teacher, grains, device, pool)
    rows = _RECENT_ROWS.get(key)
    if rows is None and store is not None:
        rows = _read_stored(store, key)
    if rows is None:
        if pool is None:
            rows = compute_rows(network, x, teacher, grains, device)
        else:
            rows = torch.stack([compute_rows(network, view, teacher, grains, device) for view in pool.views(x)], 1)
        if store is not None:
            _write_stored(store, key, rows)
    if key not in _RECENT_ROWS:
        _RECENT_ROWS[key] = rows
        while len(_RECENT_ROWS) > 1 and sum(r.nbytes for r in _RECENT_ROWS.values()) > RECENT_ROWS_BYTES:
            _RECENT_ROWS.popitem(last=False)
    _RECENT_ROWS.move_to_end(key)
    return rows


STORED_ROWS_BYTES = 1024 * 2**20  # on a site's disk; the least recently used files go first


def _stored_path(store: Path, key: str) -> Path:
    return store / f"rows-{key[:40]}.npz"


def _read_stored(store: Path, key: str) -> torch.Tensor | None:
    """Rows a process before this one stored under ``key``, or None (a file that cannot be
    read is computed again and replaced)."""
    from skeletons.atomic import read_cached_arrays

    path = _stored_path(store, key)
    stored = read_cached_arrays(path)
    if stored is None or "rows" not in stored:
        return None
    os.utime(path)  # recently used: kept the longest
    return torch.from_numpy(stored["rows"])


def _write_stored(store: Path, key: str, rows: torch.Tensor) -> None:
    """Store rows atomically, readable by the site's user only (they are computed from its
    sequences), then drop the least recently used files over :data:`STORED_ROWS_BYTES`."""
    from skeletons.atomic import write_arrays

    written = _stored_path(store, key)
    write_arrays(written, {"rows": rows.numpy()}, mode=0o600)
    sizes = {f: f.stat() for f in store.glob("rows-*.npz")}
    total = 0
    for f in sorted(sizes, key=lambda f: sizes[f].st_mtime, reverse=True):
        total += sizes[f].st_size
        if total > STORED_ROWS_BYTES and f != written:
            f.unlink(missing_ok=True)


@torch.no_grad()
def compute_rows(network: FSARNet, x: torch.Tensor, teacher: FSARNet | None, grains: tuple[int, ...],
                 device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Every sequence of ``x`` as one row (:class:`Rows`), float32 on the CPU, computed
    batch by batch in eval mode (the frozen blocks have no dropout or batch statistics,
    so train and eval mode agree)."""
    was_training = network.training
    network.eval()
    out = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            parts = [network.pool_from(network.block_features(xb, 0), 0)]
            z = network.input_statistics(xb)
            if z is not None:
                parts.append(z)
            for g in grains:
                parts.append(network.pool_from(teacher.block_features(xb, g, shared_topology_only=True), g))
            out.append(torch.cat([p.float() for p in parts], dim=1).cpu())
    finally:
        network.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def head_only_inputs(
    network: nn.Module, teacher: nn.Module | None, recipe: Any, x: Any,
    global_shared: Mapping[str, Any] | None, pool_seed: int = 0, store: Path | None = None,
) -> tuple[nn.Module, nn.Module | None, Any, Mapping[str, Any] | None]:
    """(model, teacher, training inputs, global shared values) for a round's training:
    the cached wrappers and rows when :func:`can_cache` allows, else the arguments as
    given. The wrappers train the network's own parameters in place. ``pool_seed`` draws
    an augmenting site's pool of views (keep it the same across rounds); ``store`` is
    where rows also go on disk (:func:`cached_rows`)."""
    if not can_cache(network, recipe):
        return network, teacher, x, global_shared
    from client.trainer import check_grains, resolve_device

    grains = tuple(recipe.grains) if teacher is not None else ()
    check_grains(network, grains)  # before the rows, which would fail less clearly
    device = resolve_device(recipe.device)
    network.to(device)
    if teacher is not None:
        teacher.to(device)
    rows = Rows.of(network, grains)
    pool = ViewPool(recipe.augmentation, recipe.augment_pool, pool_seed) if augments(recipe) else None
    data = cached_rows(network, x, teacher, grains, device, pool, store)
    head = CachedHead(network, rows)
    names = {name for name, _ in head.named_parameters()}
    shared = {k: v for k, v in global_shared.items() if k in names} if global_shared else global_shared
    log.info("frozen backbone: the head trains on %d cached rows of %d values%s", len(data), rows.width,
             f", {pool.count} augmented views each" if pool else "")
    return head, CachedTeacher(rows) if grains else None, data, shared


def evaluate_site(network: nn.Module, x: Any, y: Any, config: Mapping[str, Any],
                  store: Path | None = None) -> dict[str, float]:
    """The trainer's ``evaluate`` on a site's test split; when the run freezes every
    block (``frozen-blocks``), on the split's rows, which the backbone then computes once
    for the whole run (the head's logits are the same either way; ``store`` as for
    :func:`cached_rows`)."""
    from client.trainer import evaluate, resolve_device

    device = str(config.get("device", "auto"))
    frozen = isinstance(network, FSARNet) and int(config.get("frozen-blocks", 0)) >= network.num_blocks
    if not frozen or len(y) == 0:
        return evaluate(network, (x, y), device=device)
    network.to(resolve_device(device))
    rows = cached_rows(network, x, None, (), resolve_device(device), store=store)
    return evaluate(CachedHead(network, Rows.of(network)), (rows, y), device=device)
