"""FSAR's site recipe over real rounds, in process: the same server loop and ClientApp
functions as the simulation, delivered by a loopback grid instead of Ray.

What is checked is what a site trains with in round 2: its own personal parameters from
round 1 (unique topology, topology scalars, head), the received global shared weights,
a teacher that is that same global model with the site's own head, and the recipe
(fresh optimizer, distillation weights, proximal term) from the strategy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message

import client.trainer as trainer
from client.app import evaluate, query, train
from inprocess_grid import InProcessGrid, coordinator_identity
from models.roles import parameter_kind, split_state
from server.federation import run_federation
from server.settings import RunSettings
from skeletons.scenario import load_scenario

TINY = Path(__file__).parent / "scenarios" / "tiny.toml"


@pytest.fixture(scope="module", autouse=True)
def server_identity():
    with coordinator_identity():
        yield


def site_function(msg: Message, context: Context) -> Message:
    """The ClientApp's train, evaluate or query function, as the message type asks."""
    kind = msg.metadata.message_type.split(".")[0]
    return {"train": train, "evaluate": evaluate, "query": query}[kind](msg, context)


def _state(model) -> dict:
    """A copy of the state dict, keys without the ``_module.`` that Opacus's wrapper adds."""
    return {k.removeprefix("_module."): v.detach().clone() for k, v in model.state_dict().items()}


def recorded_fsar_rounds(scenario_path: Path = TINY, grids: list[InProcessGrid] | None = None,
                         **run_config) -> tuple[list[dict], dict]:
    """Two rounds of fsar on the tiny scenario (or ``scenario_path``) with ``run_config`` on
    top; every local training call recorded (start and end state, teacher, global weights,
    recipe), and the grid (with every message both ways) appended to ``grids`` if given."""
    scenario = load_scenario(scenario_path)
    calls: list[dict] = []
    real_train = trainer.train

    def recording_train(model, data, config, teacher=None, global_shared=None, **kwargs):
        calls.append({
            "start": _state(model),
            "teacher": None if teacher is None else {k: v.detach().clone() for k, v in teacher.state_dict().items()},
            "global": None if global_shared is None else {k: v.detach().clone() for k, v in global_shared.items()},
            "config": config,
            "num_classes": getattr(model, "_module", model).num_classes,
            "input_range": getattr(model, "_module", model).config.input_range,
            "dp": hasattr(model, "_module"),  # wrapped by Opacus's GradSampleModule
        })
        out = real_train(model, data, config, teacher=teacher, global_shared=global_shared, **kwargs)
        calls[-1]["end"] = _state(model)
        return out

    config = dict(scenario.defaults)
    config.update({"scenario": str(scenario_path), "strategy": "fsar", "num-server-rounds": 2, "local-epochs": 1,
                   "device": "cpu", **run_config})
    grid = InProcessGrid({i + 1: site_function for i in range(len(scenario.sites))},
                         node_config=lambda nid: {"partition-id": nid - 1})
    trainer.train = recording_train
    try:
        results = run_federation(grid, RunSettings.from_run_config(config))
    finally:
        trainer.train = real_train
    errors = [reply.error.reason for reply in grid.uplink if reply.has_error()]
    assert not errors, errors
    if grids is not None:
        grids.append(grid)
    return calls, results


@pytest.fixture(scope="module")
def fsar_calls():
    return recorded_fsar_rounds(mu=0.05)


def _personal(state):
    return split_state(state, policy="fsar")[1]


def test_each_site_starts_round_two_from_its_own_personal_parameters(fsar_calls):
    calls, _ = fsar_calls
    round1, round2 = calls[:2], calls[2:]
    assert len(round2) == 2
    for before, after in zip(round1, round2):
        kept = _personal(before["end"])
        assert {parameter_kind(k) for k in kept} == {"unique", "topology_scalar", "head"}
        for key, value in kept.items():
            assert torch.equal(after["start"][key], value), key
    other = _personal(round1[1]["end"])
    assert any(not torch.equal(round2[0]["start"][k], other[k]) for k in other)  # not the other site's


def test_round_two_starts_from_the_global_shared_weights(fsar_calls):
    calls, _ = fsar_calls
    for call in calls[2:]:
        shared = split_state(call["start"], policy="fsar")[0]
        assert set(call["global"]) == set(shared)
        for key, value in call["global"].items():
            assert torch.equal(shared[key], value), key


def test_teacher_is_the_received_global_model_with_the_site_head(fsar_calls):
    calls, _ = fsar_calls
    assert calls[0]["teacher"] is None and calls[1]["teacher"] is None  # round 1: untrained global
    for call in calls[2:]:
        teacher = call["teacher"]
        assert teacher is not None
        for key, value in call["start"].items():
            assert torch.equal(teacher[key], value), key
        assert teacher["head.weight"].shape[0] == call["num_classes"]


def test_recipe_reaches_the_site(fsar_calls):
    calls, results = fsar_calls
    for call in calls:
        config = call["config"]
        assert config.schedule == "constant" and config.epochs == 1
        assert config.mu == pytest.approx(0.05)
        assert config.grains == [1, 2] and config.lambda_kd > 0 and config.lambda_mg > 0
    assert results["final"]["rounds"] == 2


def test_shared_blocks_keeps_deep_blocks_on_the_sites():
    """With ``shared-blocks = 1`` the server only ever receives block 1's shared parameters,
    and each site's deeper blocks carry over from its own round 1."""
    calls, results = recorded_fsar_rounds(**{"shared-blocks": 1})
    received = results["uplink_parameters"]
    assert received and all(k.startswith("blocks.0.") for k in received), received
    assert not any(k.endswith(".unique") for k in received)
    assert results["model"]["shared_blocks"] == 1
    deep = [k for k in calls[0]["end"] if k.startswith(("blocks.1.", "head."))]
    assert deep
    for before, after in zip(calls[:2], calls[2:]):  # round 1 end -> round 2 start, per site
        assert all(torch.equal(before["end"][k], after["start"][k]) for k in deep)


def test_local_sites_start_from_the_initial_model_once(tmp_path):
    """``local`` shares nothing, yet ``--initial-model`` must give every site the same
    start as a warm-started federation: round 1 begins from the file's parameters, round
    2 from the site's own round-1 result, and nothing is sent after round 1."""
    from server.federation import initial_arrays, model_config_for
    from skeletons.atomic import write_arrays

    scenario = load_scenario(TINY)
    config = dict(scenario.defaults)
    config.update({"scenario": str(TINY), "strategy": "local", "device": "cpu"})
    settings = RunSettings.from_run_config(config)
    fresh = initial_arrays(scenario, settings, model_config_for(scenario, settings.model_preset), "fedavg")
    start = {k: np.asarray(fresh[k].numpy() + 5.0) for k in fresh.keys()}
    write_arrays(tmp_path / "global.npz", start)

    calls, results = recorded_fsar_rounds(strategy="local", **{"initial-model": str(tmp_path)})

    assert len(calls) == 4  # two sites x two rounds
    for call in calls[:2]:
        for key, value in start.items():
            assert torch.allclose(call["start"][key], torch.from_numpy(value)), key
    for before, after in zip(calls[:2], calls[2:]):
        assert all(torch.equal(before["end"][k], after["start"][k]) for k in start)
        assert not torch.allclose(after["start"]["head.weight"], torch.from_numpy(start["head.weight"]))
    downlink = [r["downlink_bytes"] for r in results["rounds"]]
    assert downlink[0] > 0 and downlink[1] == 0, downlink
    assert results["uplink_parameters"] == []


def test_a_resumed_local_run_still_starts_new_sites_from_the_initial_model(tmp_path):
    """A coordinator restarted under ``local`` with a warm start resumes from its
    checkpoint (whose global record is empty) and still gives sites without a model of
    their own (here: new site processes, nothing on disk) the start model."""
    from server.federation import initial_arrays, model_config_for
    from skeletons.atomic import write_arrays

    scenario = load_scenario(TINY)
    config = dict(scenario.defaults)
    config.update({"scenario": str(TINY), "strategy": "local", "device": "cpu"})
    settings = RunSettings.from_run_config(config)
    fresh = initial_arrays(scenario, settings, model_config_for(scenario, settings.model_preset), "fedavg")
    start = {k: np.asarray(fresh[k].numpy() - 3.0) for k in fresh.keys()}
    write_arrays(tmp_path / "start" / "global.npz", start)
    run = {"strategy": "local", "initial-model": str(tmp_path / "start"), "checkpoint-dir": str(tmp_path / "ck"),
           "federation": "resume-demo"}

    recorded_fsar_rounds(**run, **{"num-server-rounds": 1})
    calls, results = recorded_fsar_rounds(**run, **{"num-server-rounds": 2, "resume": True})

    assert len(calls) == 2 and [r["round"] for r in results["rounds"]] == [1, 2]
    for call in calls:  # round 2 only, from the start model
        for key, value in start.items():
            assert torch.allclose(call["start"][key], torch.from_numpy(value)), key


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp-sgd"])
def test_frozen_blocks_are_not_trained_on_the_sites(dp):
    """``frozen-blocks = 2``: the input stage and the first two blocks leave every local
    training exactly as they came in, also under DP-SGD (Opacus must neither clip-and-noise
    nor step them); deeper blocks and the head still train."""
    from models.roles import is_frozen

    extra = {"dp-noise-multiplier": 0.5, "dp-max-grad-norm": 1.0, "dp-delta": 1e-5} if dp else {}
    calls, results = recorded_fsar_rounds(**{"frozen-blocks": 2, **extra})
    assert len(calls) == 4
    frozen = [k for k in calls[0]["start"] if is_frozen(k, 2) and calls[0]["start"][k].is_floating_point()]
    assert any(k.startswith("blocks.1.") for k in frozen) and not any(k.startswith("blocks.2.") for k in frozen)
    for call in calls:
        assert all(torch.equal(call["start"][k], call["end"][k]) for k in frozen)
        assert not torch.equal(call["start"]["head.weight"], call["end"]["head.weight"])
        deep = [k for k in call["start"] if k.startswith("blocks.3.") and k.endswith("conv.weight")]
        assert deep and not all(torch.equal(call["start"][k], call["end"][k]) for k in deep)
    assert all(call["dp"] == dp for call in calls)


def test_a_local_site_with_its_own_model_ignores_a_start_model_sent_again():
    """A restarted deployed site may be sent the start model a second time; under
    ``local`` its own parameters win (loading both would be a key clash), elsewhere the
    received shared parameters are what the site trains on."""
    from flwr.app import ArrayRecord

    from client.app import _unless_own_model

    start = ArrayRecord({"w": torch.zeros(3)})
    own = ArrayRecord({"w": torch.ones(3)})
    assert len(_unless_own_model(start, own, "local")) == 0
    assert _unless_own_model(start, None, "local") is start
    assert _unless_own_model(start, own, "fsar") is start
