"""Personal parameters first, then the shared ones (the order of FedRep, Collins et al. 2021).

When a site trains everything at once, its personal head and topology chase a shared
backbone that the coordinator then replaces by the average, so the aggregated model
pairs each site's personal part with a backbone it was never fitted to. Fitting the
personal part to the *received* global backbone first, then moving only the shared part
with the personal part frozen, keeps the personal part matched to a backbone that the
next average stays close to.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch.nn as nn

from models.roles import is_personal


@contextmanager
def trainable_only(model: nn.Module, keep: Callable[[str], bool]) -> Iterator[int]:
    """Within the block only parameters whose name ``keep`` accepts get gradients; yields
    how many do. The previous ``requires_grad`` flags come back afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(flags[name] and keep(name))
        count += int(p.requires_grad)
    try:
        yield count
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def personal_names(model: nn.Module, policy: str, shared_blocks: int) -> set[str]:
    return {name for name, _ in model.named_parameters() if is_personal(name, policy, shared_blocks)}


def fit_personal(model: nn.Module, data: Any, recipe: Any, epochs: int, policy: str, shared_blocks: int,
                 train_fn: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Train only the personal parameters for ``epochs`` epochs on the received model.

    No distillation and no proximal term: both act on the shared part, which is frozen here.
    """
    mine = personal_names(model, policy, shared_blocks)
    if not mine:
        raise ValueError(f"personal-epochs > 0, but policy {policy!r} keeps no parameter on the site")
    phase = replace(recipe, epochs=int(epochs), grains=[], lambda_mg=0.0, lambda_kd=0.0, mu=0.0,
                    seed=recipe.seed + 7919)
    with trainable_only(model, lambda name: name in mine):
        return train_fn(model, data, phase)


@contextmanager
def shared_only(model: nn.Module, policy: str, shared_blocks: int) -> Iterator[int]:
    """The main phase after :func:`fit_personal`: the personal part stays as fitted."""
    mine = personal_names(model, policy, shared_blocks)
    with trainable_only(model, lambda name: name not in mine) as count:
        yield count
