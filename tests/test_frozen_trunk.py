"""Training the head on cached features when every block is frozen: the same updates as
training on the sequences, the same DP-SGD accounting, and no cache where it would be
wrong (a trainable block, augmentation without a pool of views)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from client.augment import Augmentation, augment, pick_views
from client.frozen_trunk import (
    CachedHead, ViewPool, cached_rows, can_cache, compute_rows, evaluate_site, head_only_inputs, trains_head_only,
)
from client.trainer import TrainConfig, evaluate, make_optimizer, train
from models.roles import freeze_blocks
from privacy.dp import DPSettings, train_private
from privacy.ledger import ContextStore, load
from tests.test_statistics_branch import context, model_with_statistics, skeletons


def frozen_pair(seed: int = 0, **changes) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A site model with every block frozen and a global teacher that differs from it
    (its personal topology), as in a round after the first."""
    model = model_with_statistics(seed=seed, **changes)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "blocks" in name:
                p.add_(0.1 * torch.randn_like(p))
    freeze_blocks(model, model.num_blocks)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return model, teacher.eval()


RECIPE = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", grains=[1], device="cpu",
                     mixed_precision=False, mu=0.1, seed=3)


@pytest.mark.parametrize("projection", [True, False])
def test_training_on_cached_rows_updates_the_head_as_training_on_the_sequences_does(projection):
    x, y = skeletons(24)
    direct, teacher = frozen_pair(statistics_projection=projection)
    cached = copy.deepcopy(direct)
    head_before = direct.head.weight.detach().clone()
    shared = {k: v.clone() for k, v in direct.state_dict().items() if not k.startswith("statistics.scale")}
    shared = {k: v for k, v in shared.items() if k in dict(direct.named_parameters())}

    out_direct = train(direct, (x, y), RECIPE, teacher=teacher, global_shared=shared,
                       optimizer=make_optimizer(direct, RECIPE))
    learner, learner_teacher, rows, learner_shared = head_only_inputs(cached, teacher, RECIPE, x, shared)
    assert isinstance(learner, CachedHead) and rows.shape == (24, 8 + 8 + learner.rows.stats_dim)
    assert sorted(learner_shared) == sorted(n for n, _ in learner.named_parameters())
    assert any("proj" in n for n in learner_shared) == projection  # without it only the head trains
    out_cached = train(learner, (rows, y), RECIPE, teacher=learner_teacher, global_shared=learner_shared,
                       optimizer=make_optimizer(learner, RECIPE))

    assert out_cached["steps"] == out_direct["steps"] == 6
    assert out_cached["loss"] == pytest.approx(out_direct["loss"], rel=1e-5)
    for (name, a), (_, b) in zip(direct.state_dict().items(), cached.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    # the comparison is of trained heads, not of two untouched copies
    assert (cached.head.weight - head_before).abs().max() > 1e-3


def test_the_cache_is_used_only_when_nothing_below_the_head_trains_and_nothing_augments():
    model, teacher = frozen_pair()
    assert trains_head_only(model) and can_cache(model, RECIPE)
    assert not can_cache(model, TrainConfig(rotate=15.0))  # every step would see a new copy
    next(model.blocks[1].parameters()).requires_grad_(True)
    assert not trains_head_only(model)
    x, y = skeletons(8)
    same = head_only_inputs(model, teacher, RECIPE, x, None)
    assert same[0] is model and same[1] is teacher and same[2] is x
    fresh = model_with_statistics()  # a model that trains its blocks
    assert not can_cache(fresh, RECIPE)


def test_dp_sgd_on_cached_rows_accounts_as_on_the_sequences(tmp_path):
    x, y = skeletons(40)
    model, teacher = frozen_pair()
    recipe = TrainConfig(epochs=2, batch_size=10, lr=0.01, optimizer="adamw", grains=[1], device="cpu")
    settings = DPSettings(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    before = copy.deepcopy(model.head.weight)
    stores = {}
    for tag, use_cache in (("rows", True), ("sequences", False)):
        net = copy.deepcopy(model)
        learner, t, inputs, _ = (head_only_inputs(net, teacher, recipe, x, None) if use_cache
                                 else (net, teacher, x, None))
        stores[tag] = ContextStore(context())
        metrics, privacy = train_private(
            learner, (inputs, y), recipe, settings, stores[tag], site="s", run="r", server_round=2,
            planned_rounds=3, train_fn=train, optimizer_fn=make_optimizer, teacher=t)
        assert metrics["privacy"]["steps"] == 2 * 4
        if use_cache:
            assert not torch.equal(net.head.weight, before)  # the network's own head trained
            for a, b in zip(net.blocks.parameters(), model.blocks.parameters()):
                assert torch.equal(a, b)
    ledgers = {tag: load(store) for tag, store in stores.items()}
    assert ledgers["rows"].history == ledgers["sequences"].history  # same noise, rate and steps
    assert ledgers["rows"].epsilon() == pytest.approx(ledgers["sequences"].epsilon())
    assert 0 < ledgers["rows"].epsilon() <= 4.0


def test_rows_are_reused_while_the_sequences_and_frozen_weights_stay_and_rebuilt_when_they_change():
    x, _ = skeletons(12)
    model, teacher = frozen_pair()
    device = torch.device("cpu")
    first = cached_rows(model, x, teacher, (1,), device)
    with torch.no_grad():  # what training changes, and the teacher's parts no row reads
        model.head.weight.add_(1.0)
        model.statistics.proj.weight.add_(1.0)
        teacher.head.weight.add_(1.0)
    assert cached_rows(model, x, teacher, (1,), device) is first
    assert cached_rows(model, x, None, (), device).shape[1] < first.shape[1]  # no grain columns
    for change in (lambda: next(model.blocks[1].parameters()).add_(0.5),
                   lambda: next(teacher.blocks[0].parameters()).add_(0.5),
                   lambda: model.statistics.scale_std.mul_(2.0),
                   lambda: x.mul_(1.5)):
        with torch.no_grad():
            change()
        again = cached_rows(model, x, teacher, (1,), device)
        assert again is not first and not torch.allclose(again, first)
        torch.testing.assert_close(again, compute_rows(model, x, teacher, (1,), device))
        first = again


def test_a_site_evaluates_on_rows_when_every_block_is_frozen_with_the_same_result():
    x, y = skeletons(20)
    model, _ = frozen_pair()
    with torch.no_grad():
        model.head.weight.normal_()
        model.statistics.proj.weight.normal_()
    direct = evaluate(model, (x, y), device="cpu")
    on_rows = evaluate_site(model, x, y, {"frozen-blocks": model.num_blocks, "device": "cpu"})
    assert on_rows["num_examples"] == 20
    assert on_rows["accuracy"] == direct["accuracy"]
    assert on_rows["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    with torch.no_grad():  # a new head on the same backbone: the rows are reused, the result is the head's
        model.head.weight.normal_()
    torch.testing.assert_close(
        torch.tensor(evaluate_site(model, x, y, {"frozen-blocks": model.num_blocks, "device": "cpu"})["loss"]),
        torch.tensor(evaluate(model, (x, y), device="cpu")["loss"]))


POOLED = replace(RECIPE, rotate=20.0, scale=0.1, augment_pool=3)


def test_an_augmenting_site_caches_a_pool_of_views_drawn_once_per_sequence():
    x, y = skeletons(10)
    model, teacher = frozen_pair()
    assert can_cache(model, POOLED) and not can_cache(model, replace(POOLED, augment_pool=0))
    learner, learner_teacher, rows, _ = head_only_inputs(model, teacher, POOLED, x, None, pool_seed=7)
    assert rows.shape == (10, 3, learner.rows.width)
    # view k is the rows of the k-th augmented copy drawn from the site's seed
    gen = torch.Generator().manual_seed(7)
    for k in range(3):
        expected = compute_rows(model, augment(x, POOLED.augmentation, gen), teacher, (1,), torch.device("cpu"))
        torch.testing.assert_close(rows[:, k], expected)
    assert not torch.allclose(rows[:, 0], rows[:, 1])  # the views differ
    # a later round (same seed, same frozen weights) finds the same pool; another seed does not
    assert head_only_inputs(model, teacher, POOLED, x, None, pool_seed=7)[2] is rows
    assert not torch.equal(head_only_inputs(model, teacher, POOLED, x, None, pool_seed=8)[2], rows)


def test_each_step_draws_one_cached_view_per_sample():
    views = torch.arange(6 * 4, dtype=torch.float32).view(6, 4, 1).expand(6, 4, 5)
    picked = pick_views(views, torch.Generator().manual_seed(0))
    assert picked.shape == (6, 5)
    index = picked[:, 0].long()
    assert torch.equal(index // 4, torch.arange(6))  # each row is a view of its own sample
    draws = torch.stack([pick_views(views, g)[:, 0] for g in [torch.Generator().manual_seed(s) for s in range(20)]])
    assert len(set(draws.flatten().long().remainder(4).tolist())) == 4  # every view gets drawn


def test_dp_sgd_trains_on_a_pool_of_views_under_the_sites_budget():
    x, y = skeletons(30)
    model, teacher = frozen_pair()
    recipe = replace(POOLED, epochs=2, batch_size=10, augment_multiplicity=2)
    learner, t, inputs, _ = head_only_inputs(model, teacher, recipe, x, None, pool_seed=1)
    assert inputs.dim() == 3
    before = model.head.weight.detach().clone()
    settings = DPSettings(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    metrics, privacy = train_private(
        learner, (inputs, y), recipe, settings, ContextStore(context()), site="s", run="r", server_round=2,
        planned_rounds=3, train_fn=train, optimizer_fn=make_optimizer, teacher=t)
    assert metrics["privacy"]["steps"] == 2 * 3 and 0 < privacy["privacy-epsilon"] <= 4.0
    assert not torch.equal(model.head.weight, before)


def test_the_pool_is_a_checked_setting():
    from server.settings import RunSettings
    from skeletons.scenario import ScenarioError, check_site_recipe

    with pytest.raises(ValueError, match="augment_pool"):
        TrainConfig(augment_pool=-1)
    with pytest.raises(ScenarioError, match="augment-pool = -2"):
        check_site_recipe({"augment-pool": -2}, "site a: recipe")
    assert RunSettings.from_run_config({"augment-pool": 16}).augmentation()["augment-pool"] == 16
    assert ViewPool(Augmentation(rotate=10.0), 2, 0) != ViewPool(Augmentation(rotate=10.0), 2, 1)


def test_a_site_that_starts_a_new_process_per_message_finds_its_rows_on_disk(tmp_path, monkeypatch):
    import client.frozen_trunk as trunk

    x, _ = skeletons(12)
    model, teacher = frozen_pair()
    store = tmp_path / "rows"
    trunk._RECENT_ROWS.clear()  # rows an earlier test computed in memory
    first = cached_rows(model, x, teacher, (1,), torch.device("cpu"), store=store)
    files = list(store.glob("rows-*.npz"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o077 == 0  # the site's user only
    trunk._RECENT_ROWS.clear()  # a new process: nothing in memory
    monkeypatch.setattr(trunk, "compute_rows", lambda *a, **k: pytest.fail("recomputed rows stored on disk"))
    again = cached_rows(model, x, teacher, (1,), torch.device("cpu"), store=store)
    assert torch.equal(again, first)
    monkeypatch.undo()
    files[0].write_bytes(b"PK\x03\x04 cut short")  # an unreadable file is computed again and replaced
    trunk._RECENT_ROWS.clear()
    assert torch.equal(cached_rows(model, x, teacher, (1,), torch.device("cpu"), store=store), first)
    assert torch.equal(torch.from_numpy(np.load(files[0])["rows"]), first)
    monkeypatch.setattr(trunk, "STORED_ROWS_BYTES", 1)  # over the bound: only the newest file stays
    cached_rows(model, x[:6], teacher, (1,), torch.device("cpu"), store=store)
    assert len(list(store.glob("rows-*.npz"))) == 1 and not files[0].exists()
