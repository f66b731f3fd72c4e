"""Augmentation multiplicity: several augmented copies of each sample per step, whose
gradients DP-SGD averages per sample before clipping (so the copies cost no privacy)."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import PrivacyEngine

from client.augment import augment
from client.trainer import TrainConfig, train
from skeletons.scenario import ScenarioError, check_copies_augmented, load_scenario, site_copies
from test_dp import tiny_data, tiny_model
from test_fsar_rounds import recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)
from test_site_recipe import scenario_with_front_recipe


def private_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(y))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    private, dp_opt, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0, max_grad_norm=clip,
        poisson_sampling=False)
    return private, dp_opt


def expected_update(model: torch.nn.Module, copies_x: torch.Tensor, y: torch.Tensor, copies: int,
                    clip: float) -> list[torch.Tensor]:
    """Sum over samples of the clipped mean of each sample's per-copy gradients, over the
    batch size: what one noiseless DP-SGD step with augmentation multiplicity applies."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(y)):
        mean = [torch.zeros_like(p) for p in params]
        for k in range(copies):
            row = i * copies + k
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(copies_x[row:row + 1]), y[i:i + 1]).backward()
            mean = [m + p.grad / copies for m, p in zip(mean, params)]
        norm = torch.sqrt(sum((m ** 2).sum() for m in mean))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [t + factor * m for t, m in zip(total, mean)]
    return [t / len(y) for t in total]


def test_a_private_step_clips_each_samples_mean_over_its_copies():
    copies, clip = 3, 0.05
    x, y = tiny_data(6)
    model = tiny_model()
    reference = copy.deepcopy(model)
    config = TrainConfig(epochs=1, batch_size=6, lr=1.0, schedule="constant", device="cpu", rotate=40.0,
                         scale=0.3, augment_multiplicity=copies, seed=5)
    # the trainer augments the batch's copies with this generator: rebuild the same copies
    copies_x = augment(x.repeat_interleave(copies, 0), config.augmentation, torch.Generator().manual_seed(6))
    want = expected_update(reference, copies_x, y, copies, clip)
    before = [p.detach().clone() for p in model.parameters()]

    private, dp_opt = private_sgd(model, x, y, clip)
    train(private, [(x, y)], config, optimizer=dp_opt)

    got = [b - p.detach() for b, p in zip(before, model.parameters())]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-7)
    # clipping acted on the mean over copies: each sample's clipped share is at most
    # clip / batch, so the update is too, while the copies' own gradients were larger
    assert torch.sqrt(sum((g ** 2).sum() for g in got)) <= clip * (1 + 1e-4)


def test_one_copy_gives_the_plain_private_step():
    x, y = tiny_data(6)
    runs = []
    for copies_config in ({}, {"augment_multiplicity": 1}):
        model = tiny_model()
        private, dp_opt = private_sgd(model, x, y, clip=0.05)
        config = TrainConfig(epochs=1, batch_size=6, lr=1.0, schedule="constant", device="cpu", rotate=40.0,
                             seed=5, **copies_config)
        train(private, [(x, y)], config, optimizer=dp_opt)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1])


def test_copies_without_an_augmentation_are_refused():
    with pytest.raises(ValueError, match="augment_multiplicity 4 needs an augmentation"):
        TrainConfig(augment_multiplicity=4)
    with pytest.raises(ValueError, match="augment_multiplicity must be >= 1"):
        TrainConfig(augment_multiplicity=0, rotate=10.0)


def test_the_training_metrics_count_samples_not_copies():
    x, y = tiny_data(12)
    config = TrainConfig(epochs=1, batch_size=4, lr=0.01, schedule="constant", device="cpu", scale=0.2,
                         augment_multiplicity=3)
    metrics = train(tiny_model(), (x.numpy(), y.numpy()), config)
    assert metrics["history"][0]["samples"] == 12
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_a_site_recipe_sets_its_copies_and_a_bad_value_names_the_key(tmp_path):
    path = scenario_with_front_recipe(tmp_path, "{ augment-rotate = 30, augment-multiplicity = 4 }")
    assert load_scenario(path).sites[0].recipe["augment-multiplicity"] == 4
    with pytest.raises(ScenarioError, match="augment-multiplicity = 0"):
        load_scenario(scenario_with_front_recipe(tmp_path, "{ augment-rotate = 30, augment-multiplicity = 0 }"))
    with pytest.raises(ScenarioError, match="augment-multiplicity = 2.5 is not a int"):
        load_scenario(scenario_with_front_recipe(tmp_path, "{ augment-rotate = 30, augment-multiplicity = 2.5 }"))


def test_run_wide_copies_go_only_to_sites_that_augment():
    # a site's own value wins; the run's applies where the site (or the run) augments
    assert site_copies({"augment-multiplicity": 4}, {"augment-rotate": 60}) == 4
    assert site_copies({"augment-multiplicity": 4}, {}) == 1
    assert site_copies({"augment-multiplicity": 4, "augment-scale": 0.1}, {}) == 4
    assert site_copies({"augment-multiplicity": 4}, {"augment-rotate": 60, "augment-multiplicity": 2}) == 2
    assert site_copies({}, {"augment-rotate": 60}) == 1
    # only a site's own copies without any augmentation are refused
    check_copies_augmented({"augment-multiplicity": 4}, {}, "site a")
    with pytest.raises(ScenarioError, match="site a: augment-multiplicity = 3 needs augment-rotate"):
        check_copies_augmented({"augment-multiplicity": 4}, {"augment-multiplicity": 3}, "site a")
    check_copies_augmented({"augment-scale": 0.1}, {"augment-multiplicity": 3}, "site a")


def test_the_simulator_refuses_copies_when_no_site_augments(tmp_path):
    from simulations.run import settings_from_args
    from skeletons.clikit import UserError
    from test_sim_options import parse

    with pytest.raises(UserError, match="augment-multiplicity = 4 is for the sites that augment, and no site"):
        settings_from_args(parse("--set", "augment-multiplicity=4"), "fsar", tmp_path)
    settings = settings_from_args(parse("--set", "augment-multiplicity=4", "--set", "augment-scale=0.1"),
                                  "fsar", tmp_path)
    assert settings.augment_multiplicity == 4
    with pytest.raises(UserError, match="site front: augment-multiplicity = 2 needs augment-rotate"):
        settings_from_args(parse("--scenario", str(scenario_with_front_recipe(tmp_path, "{ augment-multiplicity = 2 }"))),
                           "fsar", tmp_path)


def test_run_wide_copies_reach_only_the_augmenting_sites_trainer(tmp_path):
    """One site rotates (its own recipe), the other does not: the run's copies reach the
    first site's DP-SGD steps, the second trains one copy (rows it can keep)."""
    path = scenario_with_front_recipe(tmp_path, "{ augment-rotate = 30 }")
    calls, results = recorded_fsar_rounds(path, **{"num-server-rounds": 1, "augment-multiplicity": 3,
                                                   "dp-noise-multiplier": 1.0})
    front, side = calls  # one round, the sites in node order
    assert front["dp"] and side["dp"]
    assert (front["config"].augment_multiplicity, front["config"].rotate) == (3, 30.0)
    assert (side["config"].augment_multiplicity, side["config"].augmentation.active) == (1, False)
    assert results["final"]["rounds"] == 1


def test_the_copies_reach_each_sites_trainer_under_dp(tmp_path):
    """From the scenario (one site's own recipe) and the run config to the site's trainer,
    through the coordinator's train config, with DP-SGD on."""
    path = scenario_with_front_recipe(tmp_path, "{ augment-rotate = 30, augment-multiplicity = 3 }")
    calls, results = recorded_fsar_rounds(path, **{"num-server-rounds": 1, "augment-scale": 0.1,
                                                   "augment-multiplicity": 2, "dp-noise-multiplier": 1.0})
    front, side = calls  # one round, the sites in node order
    assert front["dp"] and side["dp"]
    assert (front["config"].augment_multiplicity, front["config"].rotate) == (3, 30.0)
    assert (side["config"].augment_multiplicity, side["config"].scale) == (2, 0.1)
    assert results["final"]["rounds"] == 1
