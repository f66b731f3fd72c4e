"""Parameter roles: which parts of a model are shared with the server, which stay home.

This module is the single place that says which keys are personal under each
federated policy. Strategies, sites, checkpoints and tests ask it; nothing else
encodes the split.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

V = TypeVar("V")

KINDS = ("influence", "unique", "topology_scalar", "head", "norm", "backbone")

PERSONAL_KINDS: dict[str, frozenset[str]] = {
    # FSAR: the unique topology, its weights and the classifier head stay on the site.
    "fsar": frozenset({"unique", "topology_scalar", "head"}),
    "fedavg": frozenset(),
    "fedavg-local-heads": frozenset({"head"}),
    "fedprox": frozenset(),
    "fedbn": frozenset({"norm"}),
    "fedbn-local-heads": frozenset({"norm", "head"}),
    "fedper": frozenset({"head"}),
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
    if len(parts) >= 2 and parts[-2] == "topology" and parts[-1] in _TOPOLOGY_LEAVES:
        return _TOPOLOGY_LEAVES[parts[-1]]
    if "head" in parts[:-1]:
        return "head"
    if any("norm" in p for p in parts[:-1]):
        return "norm"
    return "backbone"


def personal_kinds(policy: str) -> frozenset[str]:
    """The kinds kept on the site under ``policy``."""
    try:
        return PERSONAL_KINDS[policy]
    except KeyError:
        raise ValueError(
            f"unknown parameter policy {policy!r}; known: {', '.join(POLICIES)}"
        ) from None


def is_personal(name: str, policy: str = "fsar") -> bool:
    return parameter_kind(name) in personal_kinds(policy)


def split_state(
    state: Mapping[str, V], policy: str = "fsar"
) -> tuple[dict[str, V], dict[str, V]]:
    """Split a state dict into (shared, personal); every key lands in exactly one."""
    kinds = personal_kinds(policy)
    shared: dict[str, V] = {}
    personal: dict[str, V] = {}
    for key, value in state.items():
        (personal if parameter_kind(key) in kinds else shared)[key] = value
    return shared, personal


def merge_state(shared: Mapping[str, V], personal: Mapping[str, V]) -> dict[str, V]:
    """Join the two halves of :func:`split_state` back into one state dict."""
    overlap = sorted(set(shared) & set(personal))
    if overlap:
        raise ValueError(f"keys both shared and personal: {', '.join(overlap[:5])}")
    return {**shared, **personal}
