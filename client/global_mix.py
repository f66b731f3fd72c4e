"""A site's start of a round: part of the way from its own shared parameters to the global ones.

Under FSAR as published a site replaces its shared parameters by the coordinator's
average every round, and its few local epochs then pull that compromise back towards
its own data. Where the sites' data sets differ a lot (other sensors, label sets,
subjects) much of each round goes into undoing the average. With ``global-mix`` below
1 a site starts from ``own + mix * (global - own)``: it keeps part of what it had
learned and still takes in what the others learned, every round. The idea is the
local aggregation of personalized federated learning (e.g. FedALA, Zhang et al.,
AAAI 2023), here with one fixed weight chosen by the run, so it needs no extra pass
over private data and works unchanged under DP-SGD.

The site's own shared parameters after its last training are kept next to its personal
ones: in ``Context.state`` during a run and, on a deployed site, in its personal store.
A site that has none yet (its first round, or a restart without a save) starts from the
global parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from flwr.app import ArrayRecord, Context


OWN_KEY = "own-shared-parameters"
OWN_PREFIX = "own-shared/"  # in a deployed site's personal saves


def own_shared(context: Context) -> ArrayRecord | None:
    return context.state.array_records.get(OWN_KEY)


def keep_own_shared(context: Context, shared: ArrayRecord) -> None:
    context.state[OWN_KEY] = shared


def blend_towards_global(model: torch.nn.Module, global_shared: Mapping[str, torch.Tensor],
                         own: ArrayRecord, mix: float) -> int:
    """Set each shared parameter of ``model`` to ``own + mix * (global - own)``.

    Only floating-point entries present in both are blended (integer buffers, and any
    key a site holds personally, stay as loaded). Returns how many entries were blended.
    """
    mine = own.to_torch_state_dict()
    blended = 0
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if name in mine and name in global_shared and value.is_floating_point():
                if mine[name].shape != value.shape:
                    raise ValueError(f"own shared parameter {name!r} has shape {tuple(mine[name].shape)}, "
                                     f"the model {tuple(value.shape)}")
                value.copy_(mine[name] + mix * (global_shared[name].to(value.dtype) - mine[name]))
                blended += 1
    return blended


def split_saved(arrays: Mapping[str, object]) -> tuple[OrderedDict, OrderedDict]:
    """A personal save's entries as (personal, own shared), the prefix removed."""
    personal, own = OrderedDict(), OrderedDict()
    for key, value in arrays.items():
        if key.startswith(OWN_PREFIX):
            own[key[len(OWN_PREFIX):]] = value
        else:
            personal[key] = value
    return personal, own
