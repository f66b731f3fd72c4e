"""``personal-epochs``: a site fits its personal part to the received model first, then
trains only the shared part (FedRep's order), over real rounds in process."""

from __future__ import annotations

import pytest
import torch

from client.personal_phase import trainable_only
from privacy.dp import check_personal_epochs
from models.roles import split_state
from test_fsar_rounds import recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def phased_calls():
    return recorded_fsar_rounds(**{"personal-epochs": 1})


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_each_round_trains_personal_then_shared(phased_calls):
    calls, results = phased_calls
    assert len(calls) == 8  # 2 rounds x 2 sites x (personal phase, shared phase)
    for personal_phase, shared_phase in zip(calls[0::2], calls[1::2]):
        shared_keys, personal_keys = (set(part) for part in split_state(personal_phase["start"], policy="fsar"))
        moved = _changed(personal_phase["start"], personal_phase["end"])
        assert moved and moved <= personal_keys  # the shared part is frozen
        assert personal_phase["config"].grains == [] and personal_phase["config"].mu == 0.0
        moved = _changed(shared_phase["start"], shared_phase["end"])
        assert moved and moved <= shared_keys  # the fitted personal part stays as it is
        assert shared_phase["config"].grains == [1, 2]
        assert all(torch.equal(personal_phase["end"][k], shared_phase["start"][k]) for k in personal_keys)
    assert results["final"]["rounds"] == 2


def test_teacher_carries_the_freshly_fitted_personal_part(phased_calls):
    calls, _ = phased_calls
    for shared_phase in calls[5::2]:  # round 2
        teacher = shared_phase["teacher"]
        assert teacher is not None
        assert all(torch.equal(teacher[k], v) for k, v in shared_phase["start"].items())


def test_trainable_only_restores_the_flags():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    with trainable_only(model, lambda name: name.startswith("0.")) as count:
        assert count == 2
        assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def test_personal_epochs_refused_with_site_dp():
    with pytest.raises(ValueError, match="personal-epochs"):
        check_personal_epochs(1, dp_enabled=True)
    with pytest.raises(ValueError, match=">= 0"):
        check_personal_epochs(-1, dp_enabled=False)
    check_personal_epochs(1, dp_enabled=False)  # no DP: fine
    check_personal_epochs(0, dp_enabled=True)


def test_coordinator_refuses_personal_epochs_with_site_dp():
    with pytest.raises(ValueError, match="personal-epochs"):
        recorded_fsar_rounds(**{"personal-epochs": 1, "dp-epsilon": 8.0})
