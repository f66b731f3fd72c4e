"""``personal-norms``: fsar keeps the normalization layers' parameters on each site, as
fedbn does for fedavg; the rest of the shared part is still averaged."""

from __future__ import annotations

import pytest
import torch

from models.roles import parameter_kind
from simulations.compare import strategy_settings
from simulations.run import settings_from_args
from skeletons.clikit import UserError
from strategies.registry import client_policy
from test_fsar_rounds import recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)
from test_sim_options import parse


def _of_kind(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if parameter_kind(k) == kind}


def test_personal_norms_never_travel_and_each_site_keeps_its_own():
    calls, results = recorded_fsar_rounds(**{"personal-norms": True, "mu": 0.05})
    assert results["model"]["policy"] == "fsar-personal-norms"
    front_one, side_one, front_two, side_two = calls
    for call in (front_two, side_two):
        sent = call["global"]  # what the coordinator sent: the shared part
        assert sent and not _of_kind(sent, "norm"), "norm parameters reached the coordinator's model"
        assert _of_kind(sent, "backbone"), "the backbone is no longer shared"
    # round two starts each site from its own round-one norms, not from an average
    for first, second in ((front_one, front_two), (side_one, side_two)):
        norms = _of_kind(first["end"], "norm")
        assert norms
        for key, value in norms.items():
            assert torch.equal(second["start"][key], value), key
    norm_keys = list(_of_kind(front_two["start"], "norm"))
    assert not all(torch.equal(front_two["start"][k], side_two["start"][k]) for k in norm_keys)
    # the shared backbone is the same on both sites at the start of round two
    for key in _of_kind(front_two["global"], "backbone"):
        assert torch.equal(front_two["start"][key], side_two["start"][key]), key


def test_fsar_as_published_averages_the_norms():
    calls, _ = recorded_fsar_rounds(mu=0.05)
    front_two, side_two = calls[2:]
    norms = _of_kind(front_two["global"], "norm")
    assert norms
    for key in norms:
        assert torch.equal(front_two["start"][key], side_two["start"][key]), key


def test_personal_norms_is_fsars_option(tmp_path):
    assert client_policy("fsar", shared_label_set=False, personal_norms=True) == "fsar-personal-norms"
    assert client_policy("fsar", shared_label_set=True, share_head=True,
                         personal_norms=True) == "fsar-shared-head-personal-norms"
    with pytest.raises(ValueError, match="'personal-norms' applies to fsar only, not 'fedavg'"):
        client_policy("fedavg", shared_label_set=False, personal_norms=True)
    assert settings_from_args(parse("--personal-norms"), "fsar", tmp_path).personal_norms is True
    with pytest.raises(UserError, match="'personal-norms' applies to fsar only, not 'local'"):
        settings_from_args(parse("--personal-norms"), "local", tmp_path)
    assert strategy_settings(parse("--personal-norms"), "fedavg", tmp_path).personal_norms is False
    assert strategy_settings(parse("--personal-norms"), "fsar", tmp_path).personal_norms is True
