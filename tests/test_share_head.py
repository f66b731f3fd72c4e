"""``share-head``: fsar over sites with one label set averages the classifier head too,
while the unique topologies and topology scalars still stay on the sites."""

from __future__ import annotations

import pytest
import torch

from models.roles import parameter_kind, split_state
from simulations.compare import strategy_settings
from simulations.run import settings_from_args
from skeletons.clikit import UserError
from strategies.registry import client_policy
from test_fsar_rounds import TINY, recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)
from test_sim_options import parse


def _heads(call: dict, key: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in call[key].items() if parameter_kind(k) == "head"}


def test_a_shared_head_travels_and_both_sites_start_round_two_from_it():
    calls, results = recorded_fsar_rounds(**{"share-head": True, "mu": 0.05})
    assert results["model"]["policy"] == "fsar-shared-head"
    round_two = calls[2:]
    for call in round_two:
        received = call["global"]  # what the coordinator sent: the shared part
        assert _heads(call, "global"), "the head is not in the shared parameters"
        assert not any(parameter_kind(k) in ("unique", "topology_scalar") for k in received)
        for key, value in _heads(call, "global").items():
            assert torch.equal(call["start"][key], value), key
            assert torch.equal(call["teacher"][key], value), key  # the teacher is the whole global model
    front, side = round_two
    for key in _heads(front, "start"):
        assert torch.equal(front["start"][key], side["start"][key])
    # the unique topologies are still each site's own: they differ between the sites
    unique = [k for k in front["start"] if parameter_kind(k) == "unique"]
    assert unique and not all(torch.equal(front["start"][k], side["start"][k]) for k in unique)


def test_fsar_as_published_keeps_each_sites_head():
    calls, results = recorded_fsar_rounds(mu=0.05)
    assert results["model"]["policy"] == "fsar"
    front, side = calls[2:]
    assert not _heads(front, "global")
    heads = [k for k in front["start"] if parameter_kind(k) == "head"]
    assert heads and not all(torch.equal(front["start"][k], side["start"][k]) for k in heads)
    shared, personal = split_state(front["start"], policy="fsar")
    assert set(heads) <= set(personal)


def test_share_head_is_refused_where_it_means_nothing(tmp_path):
    assert client_policy("fsar", shared_label_set=True, share_head=True) == "fsar-shared-head"
    with pytest.raises(ValueError, match="'share-head' applies to fsar only, not 'fedbn'"):
        client_policy("fedbn", shared_label_set=True, share_head=True)
    with pytest.raises(ValueError, match="'share-head' needs sites with one label set"):
        client_policy("fsar", shared_label_set=False, share_head=True)
    assert settings_from_args(parse("--share-head"), "fsar", tmp_path).share_head is True
    with pytest.raises(UserError, match="'share-head' applies to fsar only, not 'fedavg'"):
        settings_from_args(parse("--share-head"), "fedavg", tmp_path)
    assert strategy_settings(parse("--share-head"), "fedavg", tmp_path).share_head is False  # compare: fsar only
    assert strategy_settings(parse("--share-head"), "fsar", tmp_path).share_head is True
    with pytest.raises(UserError, match="'share-head' applies to fsar only"):
        settings_from_args(parse("--set", "share-head=true"), "fedprox", tmp_path)


def test_fedsar_sim_run_refuses_share_head_for_another_strategy(tmp_path, capsys):
    from simulations.cli import main

    code = main(["run", "--scenario", str(TINY), "--strategy", "fedavg", "--share-head", "--out", str(tmp_path)])
    assert code != 0
    assert "'share-head' applies to fsar only, not 'fedavg'" in capsys.readouterr().err
