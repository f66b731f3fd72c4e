"""``global-mix``: a site starts each round part of the way from its own shared parameters
to the global ones, keeps its own across restarts, and the distillation teacher stays the
global model."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from client.global_mix import OWN_KEY, blend_towards_global, own_shared
from client.personal_store import load_personal, save_personal
from models.roles import check_global_mix, split_state
from simulations.run import settings_from_args
from skeletons.clikit import UserError
from test_fsar_rounds import recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)
from test_site_config import arrays, context_for, site_dir  # noqa: F401  (fixture)
from test_sim_options import parse


DP_SGD = {"dp-noise-multiplier": 0.5, "dp-max-grad-norm": 1.0, "dp-delta": 1e-5}


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "dp-sgd"])
def mixed_calls(request):
    """Two rounds with global-mix 0.25, without and with DP-SGD (Opacus wraps the model:
    what the site keeps must still be its own plain parameter names)."""
    extra = DP_SGD if request.param else {}
    calls, results = recorded_fsar_rounds(**{"global-mix": 0.25, "mu": 0.05, **extra})
    assert all(call["dp"] == request.param for call in calls)
    return calls, results


def test_round_two_starts_between_the_sites_own_and_the_global_shared_parameters(mixed_calls):
    calls, _ = mixed_calls
    for before, after in zip(calls[:2], calls[2:]):
        own = split_state(before["end"], policy="fsar")[0]
        start = split_state(after["start"], policy="fsar")[0]
        glob = after["global"]
        assert set(glob) == set(start)
        moved = 0
        for key, value in glob.items():
            if not value.is_floating_point():
                continue
            expected = own[key] + 0.25 * (value - own[key])
            assert torch.allclose(start[key], expected, atol=1e-6), key
            moved += int(not torch.equal(own[key], value))
        assert moved > 0  # the sites had drifted apart, so the blend is neither end


def test_the_teacher_is_still_the_received_global_model(mixed_calls):
    calls, _ = mixed_calls
    for call in calls[2:]:
        for key, value in call["global"].items():
            assert torch.equal(call["teacher"][key], value), key


def test_round_one_and_global_mix_one_start_from_the_global_model():
    calls, _ = recorded_fsar_rounds(**{"global-mix": 1.0, "mu": 0.05})
    for call in calls[2:]:
        start = split_state(call["start"], policy="fsar")[0]
        assert all(torch.equal(start[k], v) for k, v in call["global"].items())


def test_blend_arithmetic_and_shape_check():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    glob = {k: torch.full_like(v, 4.0) for k, v in model.state_dict().items() if v.is_floating_point()}
    own = ArrayRecord(OrderedDict((k, Array(np.zeros(v.shape, np.float32))) for k, v in glob.items()))
    counter = model.state_dict()["1.num_batches_tracked"].clone()
    assert blend_towards_global(model, glob, own, 0.5) == len(glob)
    assert all(torch.equal(model.state_dict()[k], torch.full_like(v, 2.0)) for k, v in glob.items())
    assert torch.equal(model.state_dict()["1.num_batches_tracked"], counter)  # integers stay as loaded
    bad = ArrayRecord(OrderedDict([("0.weight", Array(np.zeros((5, 5), np.float32)))]))
    with pytest.raises(ValueError, match=r"own shared parameter '0.weight' has shape \(5, 5\)"):
        blend_towards_global(model, glob, bad, 0.5)


@pytest.mark.parametrize("mix", [0.0, -0.1, 1.5])
def test_global_mix_outside_zero_one_is_refused(mix, tmp_path):
    with pytest.raises(ValueError, match="'global-mix' must be in \\(0, 1\\]"):
        check_global_mix(mix)
    with pytest.raises(UserError, match="'global-mix' must be in"):
        settings_from_args(parse("--global-mix", str(mix)), "fsar", tmp_path)
    assert settings_from_args(parse("--global-mix", "0.5"), "fsar", tmp_path).global_mix == 0.5


def test_global_mix_and_personal_epochs_exclude_each_other(tmp_path):
    with pytest.raises(UserError, match="exclude each other"):
        settings_from_args(parse("--global-mix", "0.5", "--personal-epochs", "1"), "fsar", tmp_path)


def test_a_deployed_site_keeps_its_own_shared_parameters_across_a_restart(site_dir):  # noqa: F811
    config = ConfigRecord({"federation": "fed", "server-round": 1, "model-config": "{}",
                           "layout": "kinect-v1", "policy": "fsar"})
    personal = ArrayRecord(OrderedDict((k, Array(v)) for k, v in arrays(3.0).items()))
    own = ArrayRecord(OrderedDict([("blocks.0.gcn.conv.weight", Array(np.full((2, 2), 5.0, np.float32)))]))
    save_personal(context_for(site_dir / "site.toml"), config, personal, own=own)
    config["server-round"] = 2
    restarted = context_for(site_dir / "site.toml")  # empty Context.state, as after a restart
    loaded = load_personal(restarted, config)
    assert set(loaded.keys()) == set(personal.keys())  # the own copy is not a personal parameter
    assert OWN_KEY in restarted.state.array_records
    assert np.array_equal(own_shared(restarted)["blocks.0.gcn.conv.weight"].numpy(), np.full((2, 2), 5.0))
