"""Parameter roles: which parts of a model are shared with the server, which stay home.

This module is the single place that says which keys are personal under each
federated policy. Strategies, sites, checkpoints and tests ask it; nothing else
encodes the split.

``shared_blocks`` (0: off) narrows any policy by depth: only blocks ``1..shared_blocks``
may be shared, every deeper block and the head stay on the site whole. Shallow blocks learn
generic motion features that every site's data helps; deep blocks and the head are
where sites with different sensors and label sets disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, TypeVar

if TYPE_CHECKING:
    import torch

V = TypeVar("V")

KINDS = ("influence", "unique", "topology_scalar", "head", "norm", "backbone", "scale")

# The statistics branch's standardization (models.statistics) describes one site's data:
# it stays on the site under every policy, as a ledger does.
ALWAYS_PERSONAL = frozenset({"scale"})

PERSONAL_KINDS: dict[str, frozenset[str]] = {
    # FSAR: the unique topology, its weights and the classifier head stay on the site.
    "fsar": ALWAYS_PERSONAL | frozenset({"unique", "topology_scalar", "head"}),
    # FSAR for sites that share one label set (run-config share-head): the head is averaged too.
    "fsar-shared-head": ALWAYS_PERSONAL | frozenset({"unique", "topology_scalar"}),
    # FSAR with the GroupNorm affine parameters kept on each site too (run-config
    # personal-norms): a site's feature statistics stay its own, as under FedBN.
    "fsar-personal-norms": ALWAYS_PERSONAL | frozenset({"unique", "topology_scalar", "head", "norm"}),
    "fsar-shared-head-personal-norms": ALWAYS_PERSONAL | frozenset({"unique", "topology_scalar", "norm"}),
    "fedavg": ALWAYS_PERSONAL,
    "fedavg-local-heads": ALWAYS_PERSONAL | frozenset({"head"}),
    "fedprox": ALWAYS_PERSONAL,
    "fedbn": ALWAYS_PERSONAL | frozenset({"norm"}),
    "fedbn-local-heads": ALWAYS_PERSONAL | frozenset({"norm", "head"}),
    "fedper": ALWAYS_PERSONAL | frozenset({"head"}),
    "local": frozenset(KINDS),
}

POLICIES = tuple(PERSONAL_KINDS)

_TOPOLOGY_LEAVES = {
    "influence": "influence",
    "unique": "unique",
    "alpha": "topology_scalar",
    "beta": "topology_scalar",
    "gamma": "topology_scalar",
}


def parameter_kind(name: str) -> str:
    """The kind of a state-dict key, e.g. ``blocks.2.gcn.topology.unique`` -> ``unique``.

    Prefixes added by wrappers (``_module.`` from Opacus, ``module.`` from DDP) are
    ignored because only the key's own components are inspected.
    """
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] == "statistics" and parts[-1].startswith("scale_"):
        return "scale"
    if len(parts) >= 2 and parts[-2] == "topology" and parts[-1] in _TOPOLOGY_LEAVES:
        return _TOPOLOGY_LEAVES[parts[-1]]
    if "head" in parts[:-1]:
        return "head"
    if any("norm" in p for p in parts[:-1]):
        return "norm"
    return "backbone"


def block_index(name: str) -> int | None:
    """The 0-based block of a state-dict key (``blocks.2.gcn.conv.weight`` -> 2), or None
    for keys outside the blocks (the head)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "blocks" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _check_depth(key: str, value: int, num_blocks: int | None, zero_means: str) -> int:
    """``value`` of run-config ``key`` as an int: 0 or a depth the model has."""
    if int(value) < 0:
        raise ValueError(f"{key} must be >= 0 (0: {zero_means}), got {value}")
    if num_blocks is not None and int(value) > num_blocks:
        raise ValueError(f"{key} = {value}, but the model has {num_blocks} blocks")
    return int(value)


def check_shared_blocks(shared_blocks: int, num_blocks: int | None = None) -> int:
    """``shared_blocks`` as an int: 0 (every block) or a depth the model has."""
    return _check_depth("shared-blocks", shared_blocks, num_blocks, "every block")


def check_frozen_blocks(frozen_blocks: int, num_blocks: int | None = None) -> int:
    """``frozen_blocks`` as an int: 0 (train everything) or a depth the model has."""
    return _check_depth("frozen-blocks", frozen_blocks, num_blocks, "train every block")


def check_global_mix(mix: float, personal_epochs: int = 0) -> float:
    """``global-mix`` as a float in (0, 1], or a ValueError naming the run-config key."""
    mix = float(mix)
    if not 0 < mix <= 1:
        raise ValueError(f"run config 'global-mix' must be in (0, 1] (1: take the global parameters), got {mix}")
    if mix < 1 and personal_epochs > 0:
        raise ValueError("'global-mix' < 1 and 'personal-epochs' > 0 exclude each other: the personal phase "
                         "is fitted to the received global parameters, not to a blend")
    return mix


def is_frozen(name: str, frozen_blocks: int) -> bool:
    """Whether a site leaves parameter ``name`` untrained under ``frozen-blocks``: the
    input stage and blocks 1..k, the feature extractor a warm start brought in."""
    if check_frozen_blocks(frozen_blocks) == 0 or parameter_kind(name) == "head":
        return False
    if "statistics" in name.split(".")[:-1]:  # the statistics branch is no part of a warm start
        return False
    block = block_index(name)
    return block is None or block < frozen_blocks


def freeze_blocks(model: torch.nn.Module, frozen_blocks: int) -> None:
    """Stop gradients to every parameter :func:`is_frozen` names, as a site does on a warm start."""
    for name, p in model.named_parameters():
        if is_frozen(name, frozen_blocks):
            p.requires_grad_(False)


def personal_kinds(policy: str) -> frozenset[str]:
    """The kinds kept on the site under ``policy``."""
    try:
        return PERSONAL_KINDS[policy]
    except KeyError:
        raise ValueError(
            f"unknown parameter policy {policy!r}; known: {', '.join(POLICIES)}"
        ) from None


def is_personal(name: str, policy: str = "fsar", shared_blocks: int = 0) -> bool:
    if parameter_kind(name) in personal_kinds(policy):
        return True
    if check_shared_blocks(shared_blocks) == 0:
        return False
    block = block_index(name)
    return block is None or block >= shared_blocks  # the head sits on the personal blocks


def split_state(
    state: Mapping[str, V], policy: str = "fsar", shared_blocks: int = 0
) -> tuple[dict[str, V], dict[str, V]]:
    """Split a state dict into (shared, personal); every key lands in exactly one."""
    personal_kinds(policy)  # names an unknown policy even for an empty state
    shared: dict[str, V] = {}
    personal: dict[str, V] = {}
    for key, value in state.items():
        (personal if is_personal(key, policy, shared_blocks) else shared)[key] = value
    return shared, personal


def merge_state(shared: Mapping[str, V], personal: Mapping[str, V]) -> dict[str, V]:
    """Join the two halves of :func:`split_state` back into one state dict."""
    overlap = sorted(set(shared) & set(personal))
    if overlap:
        raise ValueError(f"keys both shared and personal: {', '.join(overlap[:5])}")
    return {**shared, **personal}
