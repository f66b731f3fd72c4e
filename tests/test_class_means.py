"""``head-start = "class-means"``: the head starts as the nearest-class-mean classifier of
the statistics, exactly without DP and as one Gaussian release the ledger composes under
DP, before DP-SGD spends the rest of the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from client.trainer import TrainConfig, make_optimizer, train
from privacy.class_means import (
    CLASS_MEANS_SHARE,
    check_head_start,
    check_head_start_model,
    class_sums,
    release_noise,
    signal_share,
    start_head_from_class_means,
)
from privacy.dp import BudgetExhausted, DPSettings, fit_statistics_scale, train_private
from privacy.ledger import ContextStore, epsilon_of, load, transaction
from test_statistics_branch import context, model_with_statistics, skeletons


def fitted_model(ctx, config, n: int = 32):
    model = model_with_statistics()
    x, y = skeletons(n)
    fit_statistics_scale(ctx, config, "a", model, x.numpy())
    return model, x, y


def test_without_dp_the_started_head_predicts_the_nearest_class_mean():
    ctx = context()
    model, x, y = fitted_model(ctx, {"server-round": 1})
    assert start_head_from_class_means(ctx, {"server-round": 1}, "a", model, x.numpy(), y.numpy()) == "exact"
    graph_columns = model.head.in_features - model.statistics.dim
    assert not model.head.weight[:, :graph_columns].any() and not model.head.bias.any()
    with torch.no_grad():
        z = model.input_statistics(x).numpy().astype(np.float64)
    units = z / np.linalg.norm(z, axis=1, keepdims=True)  # computed apart from the module
    means = np.stack([units[y.numpy() == c].mean(0) for c in range(4)])
    nearest = (units @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T).argmax(1)
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    np.testing.assert_array_equal(predicted, nearest)
    assert (predicted == y.numpy()).mean() > 0.5, "the statistics carry the label in these skeletons"
    assert "privacy-ledger" not in ctx.state.config_records  # no DP, no ledger


def test_one_sequence_moves_one_class_sum_by_at_most_one():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20, 9, generator=g)
    z[5] *= 1e4  # an outlier counts as much as any other sequence, no more
    y = torch.arange(20) % 3
    keep = torch.arange(20) != 5
    change = class_sums(z, y, 3) - class_sums(z[keep], y[keep], 3)
    assert change.norm(dim=1)[y[5]] == pytest.approx(1.0)
    assert change.norm(dim=1).sum() == pytest.approx(1.0), "only the sequence's own class moves"


def test_a_released_direction_is_shortened_by_the_share_of_it_the_noise_explains():
    g = torch.Generator().manual_seed(5)
    dims = 20000  # many coordinates: the noise's norm concentrates
    signal = torch.zeros(3, dims, dtype=torch.float64)
    signal[0, 0], signal[1, 0], signal[2, 0] = 0.0, 100.0, 1000.0
    noise = 2.0
    released = signal + noise * torch.randn(signal.shape, generator=g, dtype=torch.float64)
    share = signal_share(released, noise)
    cosine = F.cosine_similarity(released, signal, dim=1)
    assert share[0] < 0.05, "noise alone: a direction that starts near zero"
    torch.testing.assert_close(share[1:], cosine[1:], atol=0.03, rtol=0)
    torch.testing.assert_close(signal_share(signal[1:], 0.0), torch.ones(2, dtype=torch.float64))


def test_under_dp_the_release_is_in_the_ledger_and_dp_sgd_spends_what_is_left():
    ctx = context()
    config = {"server-round": 1, "dp-epsilon": 4.0, "dp-delta": 1e-5, "dp-max-grad-norm": 1.0}
    model, x, y = fitted_model(ctx, config, n=64)
    scale_release = load(ContextStore(ctx)).history[0]
    exact = model_with_statistics()
    exact.load_state_dict(model.state_dict())
    start_head_from_class_means(context(), {"server-round": 1}, "a", exact, x.numpy(), y.numpy())
    assert start_head_from_class_means(ctx, config, "a", model, x.numpy(), y.numpy()) == "dp"
    store = ContextStore(ctx)
    ledger = load(store)
    noise = release_noise(DPSettings(epsilon=4.0))
    assert ledger.history == [scale_release, (noise, 1.0, 1)]
    assert ledger.releases[1]["what"] == "class means" and ledger.releases[1]["clip"] == 1.0
    assert epsilon_of([(noise, 1.0, 1)], "rdp", 1e-5) <= CLASS_MEANS_SHARE * 4.0 + 1e-6
    assert ledger.epsilon() == pytest.approx(epsilon_of(ledger.history, "rdp", 1e-5))
    assert not torch.allclose(model.head.weight, exact.head.weight), "the released means carry noise"
    cosine = F.cosine_similarity(model.head.weight, exact.head.weight, dim=1)
    assert cosine.mean() > 0.15, "a release of the means (about 0.4 here), not of noise alone (about 0)"

    for p in model.blocks.parameters():
        p.requires_grad_(False)
    recipe = TrainConfig(epochs=2, batch_size=8, lr=0.05, schedule="constant", device="cpu")
    _, privacy = train_private(model, (x.numpy(), y.numpy()), recipe, DPSettings(epsilon=4.0), store, site="a",
                               run="7", server_round=1, planned_rounds=1, train_fn=train, optimizer_fn=make_optimizer)
    ledger = load(store)
    assert ledger.history[:2] == [scale_release, (noise, 1.0, 1)] and ledger.steps == 16  # 2 epochs of 64 / 8
    assert 3.8 <= privacy["privacy-epsilon"] <= 4.0, "the plan spends what the two releases left"


def test_a_release_past_the_budget_is_declined_and_the_head_stays_as_it_was():
    ctx = context()
    model, x, y = fitted_model(ctx, {"server-round": 1})  # exact scale: no ledger yet
    with transaction(ContextStore(ctx), site="a") as ledger:  # a site that already spent its budget
        ledger.history = [(0.8, 0.25, 400)]
    head = model.head.weight.clone()
    with pytest.raises(BudgetExhausted, match="class means"):
        start_head_from_class_means(ctx, {"server-round": 3, "dp-epsilon": 2.0}, "a", model, x.numpy(), y.numpy())
    ledger = load(ContextStore(ctx))
    assert len(ledger.declined) == 1 and not ledger.releases
    torch.testing.assert_close(model.head.weight, head)


def test_bad_head_start_settings_are_named():
    assert check_head_start("class-means") == "class-means"
    with pytest.raises(ValueError, match="'head-start' = 'means'"):
        check_head_start("means")
    with pytest.raises(ValueError, match="statistics branch"):
        check_head_start_model("class-means", {"statistics": False})
    assert check_head_start_model("random", {}) == "random"
    with pytest.raises(ValueError, match="statistics branch"):
        start_head_from_class_means(context(), {}, "a", model_with_statistics(statistics=False),
                                    np.zeros((2, 3, 12, 20, 1)), np.zeros(2))
    assert release_noise(DPSettings(noise_multiplier=1.7)) == 1.7


def test_sites_start_their_head_from_class_means_in_round_one_only():
    """Two fsar rounds over the real ClientApp (in-process grid, DP-SGD at epsilon 8): each
    site's first local training starts from the class-mean head, the second from the head it
    kept, and every ledger holds the class-mean release once."""
    from inprocess_grid import coordinator_identity
    from test_fsar_rounds import recorded_fsar_rounds

    grids: list = []
    with coordinator_identity():
        calls, results = recorded_fsar_rounds(grids=grids, **{"model-overrides": '{"statistics": true}', "head-start": "class-means",
                                                 "dp-epsilon": 8.0, "dp-max-grad-norm": 1.0})
    sites = len(calls) // 2
    for call in calls:
        assert call["dp"]
    for call in calls[:sites]:
        head, bias = call["start"]["head.weight"], call["start"]["head.bias"]
        stats_dim = call["start"]["statistics.scale_mean"].numel()
        assert not head[:, :-stats_dim].any() and not bias.any()
        norms = head[:, -stats_dim:].norm(dim=1)  # unit directions, shortened by the noise's share
        assert (norms <= 20.0 / stats_dim ** 0.5 + 1e-5).all() and norms.max() > 0
    for first, second in zip(calls[:sites], calls[sites:]):
        assert second["start"]["head.bias"].any(), "round 2 goes on from the trained head, no second start"
    for site, spent in results["privacy"]["sites"].items():
        assert 0 < spent["epsilon"] <= 8.0 and spent["declined_rounds"] == 0, (site, spent)
    for ctx in grids[0].contexts.values():
        ledger = load(ContextStore(ctx))
        assert [r["what"] for r in ledger.releases] == ["statistics scale", "class means"]
        assert len(ledger.rounds) == 2 and ledger.epsilon() <= 8.0
