"""``keep-optimizer-state``: a site's AdamW continues across rounds instead of restarting
(client.optimizer_state)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import client.trainer as trainer
from client.optimizer_state import STATE_KEY, restore_state, saved_state, state_record
from client.personal_store import load_personal, save_personal
from inprocess_grid import InProcessGrid
from server.federation import run_federation
from server.settings import RunSettings
from skeletons.scenario import load_scenario
from test_fsar_rounds import TINY, server_identity, site_function  # noqa: F401 (autouse fixture)
from test_site_config import context_for, site_dir  # noqa: F401 (fixture)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.scalar = nn.Parameter(torch.tensor(0.5))  # a 0-dim parameter: its moments are 0-dim too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scalar


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_a_restored_adamw_takes_the_same_steps_as_the_one_that_kept_going():
    torch.manual_seed(0)
    kept = Small()
    kept_opt = torch.optim.AdamW(kept.parameters(), lr=0.1)
    for seed in range(3):
        _step(kept, kept_opt, seed)
    record = state_record(kept_opt, kept)
    assert set(record) == {f"{n}::{e}" for n in ("linear.weight", "linear.bias", "scalar")
                           for e in ("step", "exp_avg", "exp_avg_sq")}

    rebuilt = copy.deepcopy(kept)  # next round: the same weights in a new model and optimizer
    fresh = torch.optim.AdamW(rebuilt.parameters(), lr=0.1)
    assert restore_state(fresh, rebuilt, record) == 3
    restarted = copy.deepcopy(kept)
    restarted_opt = torch.optim.AdamW(restarted.parameters(), lr=0.1)
    for seed in (3, 4):
        _step(kept, kept_opt, seed)
        _step(rebuilt, fresh, seed)
        _step(restarted, restarted_opt, seed)
    for (name, a), b, c in zip(kept.named_parameters(), rebuilt.parameters(), restarted.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
        assert not torch.allclose(c, a), name  # a restarted Adam goes elsewhere: the state mattered
    assert float(fresh.state[rebuilt.scalar]["step"]) == 5.0


def test_state_of_another_shape_or_of_an_untrained_parameter_is_not_restored():
    model = Small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    _step(model, optimizer, 0)
    record = state_record(optimizer, model)
    other = Small()
    other.linear = nn.Linear(3, 4)  # another label set: the head changed shape
    only_scalar = torch.optim.AdamW([other.scalar, other.linear.weight, other.linear.bias], lr=0.1)
    assert restore_state(only_scalar, other, record) == 1
    assert set(only_scalar.state) == {other.scalar}
    frozen = torch.optim.AdamW([model.linear.weight], lr=0.1)  # the others are frozen this time
    assert restore_state(frozen, model, record) == 1


def _rounds(**run_config) -> list[dict[str, float]]:
    """Two rounds on the tiny scenario; per local training call, AdamW's step count of
    every parameter as training starts."""
    scenario = load_scenario(TINY)
    starts: list[dict[str, float]] = []
    real_train = trainer.train

    def recording_train(model, data, config, optimizer=None, **kwargs):
        state = getattr(optimizer, "original_optimizer", optimizer).state
        names = {id(p): n.removeprefix("_module.") for n, p in model.named_parameters()}
        starts.append({names[id(p)]: float(s["step"]) for p, s in state.items()})
        return real_train(model, data, config, optimizer=optimizer, **kwargs)

    config = {**scenario.defaults, "scenario": str(TINY), "strategy": "fsar", "num-server-rounds": 2,
              "local-epochs": 1, "device": "cpu", "optimizer": "adamw", "batch-size": 16, **run_config}
    grid = InProcessGrid({i + 1: site_function for i in range(len(scenario.sites))},
                         node_config=lambda nid: {"partition-id": nid - 1})
    trainer.train = recording_train
    try:
        run_federation(grid, RunSettings.from_run_config(config))
    finally:
        trainer.train = real_train
    errors = [reply.error.reason for reply in grid.uplink if reply.has_error()]
    assert not errors, errors
    return starts


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp-sgd"])
def test_sites_start_round_two_where_their_optimizer_left_off(dp):
    private = {"dp-noise-multiplier": 0.5, "dp-max-grad-norm": 1.0} if dp else {}
    starts = _rounds(**{"keep-optimizer-state": True, "mkd": False}, **private)
    sites = len(starts) // 2
    assert sites >= 2 and len(starts) == 2 * sites
    for first, second in zip(starts[:sites], starts[sites:]):
        assert first == {}  # round 1: nothing kept yet
        steps = set(second.values())
        assert len(steps) == 1 and steps.pop() >= 1  # every trained parameter, after round 1's steps
        assert "head.weight" in second  # the personal head's state is kept as well


def test_without_the_option_every_round_starts_a_fresh_optimizer():
    starts = _rounds(mkd=False)
    assert starts and all(s == {} for s in starts)


def test_a_deployed_site_keeps_its_optimizer_state_across_a_restart_within_one_federation(site_dir):  # noqa: F811
    from flwr.app import ConfigRecord

    model = Small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for seed in range(2):
        _step(model, optimizer, seed)
    config = ConfigRecord({"federation": "fed", "server-round": 1, "model-config": "{}",
                           "layout": "kinect-v1", "policy": "fsar"})
    personal = state_record(optimizer, model)  # any record will do as the personal part
    kept = state_record(optimizer, model)
    save_personal(context_for(site_dir / "site.toml"), config, personal, optimizer=kept)

    config["server-round"] = 2
    restarted = context_for(site_dir / "site.toml")  # empty Context.state, as after a restart
    loaded = load_personal(restarted, config)
    assert not any(k.startswith("optimizer-state/") for k in loaded.keys())  # not a personal parameter
    back = saved_state(restarted)
    assert back is not None and set(back.keys()) == set(kept.keys())
    for key in kept.keys():
        np.testing.assert_array_equal(back[key].numpy(), kept[key].numpy(), err_msg=key)

    other = ConfigRecord({**dict(config.items()), "federation": "another"})
    fresh = context_for(site_dir / "site.toml")  # a new federation reuses the personal part, not the steps
    assert load_personal(fresh, other) is not None
    assert STATE_KEY not in fresh.state.array_records
