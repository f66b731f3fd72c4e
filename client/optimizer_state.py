"""A site's optimizer state from one round to the next (run option ``keep-optimizer-state``).

Why: a site builds its optimizer afresh every round, so AdamW forgets its moment
estimates and restarts its bias correction each time. Under DP-SGD a round of a small
site is only a dozen noisy steps, and Adam's first steps after a restart move every
parameter by about the full learning rate in a direction that is mostly noise.
Keeping the state makes a site's local training one continuous run of its optimizer
across rounds (the shared parameters still start each round from the global model).

The state is kept per parameter name in ``Context.state`` and, on a deployed site, in
its personal saves (:mod:`client.personal_store`, under ``optimizer-state/``), so that a
restarted site, or a coordinator resuming the federation, continues where the optimizer
left off. It is derived from the site's (clipped and noised, under DP) gradients only, so keeping
it costs no privacy.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
from flwr.app import ArrayRecord, Context

STATE_KEY = "optimizer-state"
SAVE_PREFIX = "optimizer-state/"  # in a deployed site's personal saves
_SEP = "::"  # "<parameter name>::<state entry>", e.g. "head.weight::exp_avg"


def keeps_state(config: Mapping[str, Any]) -> bool:
    """Whether the run asks sites to keep their optimizer state between rounds."""
    return bool(config.get("keep-optimizer-state", False))


def saved_state(context: Context) -> ArrayRecord | None:
    """The state the site kept after its last round of this run (None: none yet)."""
    return context.state.array_records.get(STATE_KEY)


def state_record(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> ArrayRecord:
    """Every tensor entry of ``optimizer``'s per-parameter state, keyed by parameter name."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, p in _named_parameters(model):
        for entry, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                out[f"{name}{_SEP}{entry}"] = value.detach().cpu()
    return ArrayRecord(out)


def restore_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, saved: ArrayRecord) -> int:
    """Install ``saved`` into ``optimizer`` for the parameters it trains; returns how many.

    A parameter gets its state back only when every saved moment still has the
    parameter's shape (a re-shaped parameter starts afresh). Moments go to the
    parameter's device and dtype; the step counter stays a float32 on the CPU, as torch
    keeps it, unless the optimizer is capturable or fused."""
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in saved.to_torch_state_dict().items():
        name, _, entry = key.rpartition(_SEP)
        by_param.setdefault(name, {})[entry] = value
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    restored = 0
    for name, p in _named_parameters(model):
        entries = by_param.get(name)
        group = group_of.get(id(p))
        if not entries or group is None:
            continue
        if any(tuple(v.shape) != tuple(p.shape) for k, v in entries.items() if k != "step"):
            continue
        on_device = bool(group.get("capturable") or group.get("fused"))
        optimizer.state[p] = {
            k: (v.to(dtype=torch.float32, device=p.device if on_device else "cpu") if k == "step"
                else v.to(device=p.device, dtype=p.dtype))
            for k, v in entries.items()
        }
        restored += 1
    return restored


class OptimizerKeeper:
    """Wraps an optimizer factory: the optimizer it builds starts from ``saved``, and
    :attr:`optimizer` is kept so that its state can be read after training."""

    def __init__(self, factory: Callable[[torch.nn.Module, Any], torch.optim.Optimizer],
                 saved: ArrayRecord | None) -> None:
        self.factory = factory
        self.saved = saved
        self.optimizer: torch.optim.Optimizer | None = None
        self.model: torch.nn.Module | None = None

    def __call__(self, model: torch.nn.Module, config: Any) -> torch.optim.Optimizer:
        self.optimizer = self.factory(model, config)
        self.model = model
        if self.saved is not None and len(self.saved):
            restore_state(self.optimizer, model, self.saved)
        return self.optimizer

    def keep(self, context: Context) -> ArrayRecord | None:
        """Write the trained optimizer's state into ``context.state`` (after training) and
        return it; None when no optimizer was built."""
        if self.optimizer is None or self.model is None:
            return None
        record = state_record(self.optimizer, self.model)
        context.state[STATE_KEY] = record
        return record


def _named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    from client.trainer import unwrap  # Opacus's wrapper prefixes names with "_module."

    return list(unwrap(model).named_parameters())
