"""The statistics branch: its output, its roles, its scale fitted once per site (exactly
without DP, as a Gaussian release the ledger composes under DP) and DP-SGD through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client.trainer import TrainConfig, make_optimizer, train
from models import ModelConfig, build_model
from models.roles import POLICIES, is_frozen, parameter_kind, split_state
from models.statistics import SQRT_EPS, num_statistics, sequence_statistics
from privacy.dp import BudgetExhausted, DPSettings, fit_statistics_scale, train_private
from privacy.feature_scale import MIN_SCALE_NOISE, SCALE_BUDGET_SHARE, release_noise
from privacy.ledger import ContextStore, epsilon_of, load
from skeletons.layouts import get_layout

LAYOUT = get_layout("kinect-v1")
TINY = ModelConfig(channels=(8, 8), strides=(1, 2), temporal_kernel=3, streams=("joint",), norm_groups=4,
                   statistics=True)


def model_with_statistics(classes: int = 4, seed: int = 0, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(LAYOUT, classes, 1, TINY.with_(**changes))


def skeletons(n: int = 32, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose class sets the body's size, so the statistics carry the label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 12, LAYOUT.num_joints, 1, generator=g) * (1.0 + y.float())[:, None, None, None, None]
    return x, y


def context(run_config: dict | None = None) -> Context:
    return Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config or {}))


def test_the_head_reads_the_projected_statistics_in_the_embedding_and_the_statistics_themselves():
    plain = build_model(LAYOUT, 4, 1, TINY.with_(statistics=False))
    branch = model_with_statistics()
    dim = num_statistics(LAYOUT)
    assert branch.head.in_features == plain.head.in_features + dim
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith("head.")}
    missing = branch.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in branch.state_dict() if k.startswith(("statistics.", "head.")))
    with torch.no_grad():  # the graph part of the head as the plain model's, the statistics part zero
        branch.head.weight.zero_()
        branch.head.weight[:, : plain.head.in_features] = plain.head.weight
        branch.head.bias.copy_(plain.head.bias)
    x, _ = skeletons(6)
    plain.eval(), branch.eval()
    torch.testing.assert_close(branch(x), plain(x))  # the projection starts at zero
    with torch.no_grad():
        branch.statistics.proj.weight.normal_()
        branch.head.weight.normal_()
    z = sequence_statistics(x, LAYOUT, SQRT_EPS)
    assert z.shape == (6, dim)
    pooled = branch.embed(x)
    expected = branch.head(torch.cat([pooled + branch.statistics.proj(z), z], dim=1))
    torch.testing.assert_close(branch(x), expected)
    # multi-grain distillation hands in the input's statistics with the block features
    features = branch.block_features(x, 1)
    torch.testing.assert_close(branch.forward_from(features, 1, branch.input_statistics(x)), branch(x))
    zeros = torch.zeros_like(z)  # without them the head reads zeros
    torch.testing.assert_close(branch.forward_from(features, 1),
                               branch.head(torch.cat([pooled + branch.statistics.proj(zeros), zeros], dim=1)))
    assert plain.input_statistics(x) is None


def test_without_its_projection_the_head_reads_the_embedding_and_the_statistics_side_by_side():
    branch = model_with_statistics(statistics_projection=False)
    assert branch.statistics.proj is None
    assert not any(k.startswith("statistics.proj") for k in branch.state_dict())
    assert branch.head.in_features == model_with_statistics().head.in_features
    with torch.no_grad():
        branch.head.weight.normal_()
    x, _ = skeletons(6)
    branch.eval()
    z = sequence_statistics(x, LAYOUT, SQRT_EPS)
    torch.testing.assert_close(branch(x), branch.head(torch.cat([branch.embed(x), z], dim=1)))
    frozen = [name for name, p in branch.named_parameters() if not p.requires_grad]
    assert not frozen and {name.split(".")[0] for name, _ in branch.named_parameters()} == {"blocks", "head"}


def test_multi_grain_logits_read_the_input_statistics_too():
    """With the teacher equal to the student (no unique topology), every grain's logits
    are the student's own: the distillation's cross-entropy equals the plain one."""
    import copy

    from client.trainer import training_loss

    model = model_with_statistics()
    with torch.no_grad():
        model.statistics.proj.weight.normal_()
        model.head.weight.normal_()
        for name, p in model.named_parameters():
            if name.endswith("topology.unique"):
                p.zero_()
    teacher = copy.deepcopy(model).eval()
    model.eval()
    x, y = skeletons(8)
    config = TrainConfig(grains=[1, 2], lambda_mg=1.0, lambda_kd=0.0, device="cpu")
    _, _, parts = training_loss(model, x, y, config, teacher=teacher)
    assert parts["mkd"] == pytest.approx(parts["ce"], rel=1e-5)


def test_opacus_per_sample_gradients_of_the_distillation_loss_are_each_sample_s_own():
    """Under MKD the head and the projection run twice per batch (the student's logits and
    every grain's); Opacus must still give every sample exactly its own gradient, which
    is what it clips."""
    import copy

    from opacus import GradSampleModule

    from client.trainer import training_loss

    torch.manual_seed(0)
    model = model_with_statistics()
    with torch.no_grad():
        model.statistics.proj.weight.normal_()
        model.head.weight.normal_()
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = skeletons(6)
    config = TrainConfig(grains=[1], lambda_mg=0.5, lambda_kd=0.5, device="cpu")
    own: dict[str, list[torch.Tensor]] = {}
    for i in range(len(y)):  # one sample at a time: its own gradient
        model.zero_grad()
        training_loss(model, x[i:i + 1], y[i:i + 1], config, teacher=teacher)[0].backward()
        for name, p in model.named_parameters():
            own.setdefault(name, []).append(p.grad.clone())
    private = GradSampleModule(model)
    private.zero_grad()
    training_loss(private, x, y, config, teacher=teacher)[0].backward()
    for name, p in private._module.named_parameters():
        torch.testing.assert_close(p.grad_sample, torch.stack(own[name]), rtol=1e-4, atol=1e-6, msg=name)


def test_the_scale_stays_on_the_site_under_every_policy_and_the_projection_trains_on_frozen_blocks():
    state = model_with_statistics().state_dict()
    scale = {k for k in state if parameter_kind(k) == "scale"}
    assert scale == {"statistics.scale_mean", "statistics.scale_std", "statistics.scale_fitted"}
    for policy in POLICIES:
        shared, personal = split_state(state, policy)
        assert scale <= set(personal), policy
    shared, _ = split_state(state, "fedavg")
    assert "statistics.proj.weight" in shared
    assert not is_frozen("statistics.proj.weight", 2)
    assert is_frozen("blocks.1.gcn.conv.weight", 2)


def test_without_dp_the_scale_is_the_training_splits_own_and_fitted_once():
    model = model_with_statistics()
    x, _ = skeletons()
    ctx = context()
    assert fit_statistics_scale(ctx, {"server-round": 1}, "a", model, x.numpy()) == "exact"
    stats = sequence_statistics(x.double(), LAYOUT, SQRT_EPS).float()
    torch.testing.assert_close(model.statistics.scale_mean, stats.mean(0))
    torch.testing.assert_close(model.statistics.scale_std, stats.std(0).clamp_min(1e-4))
    assert model.statistics.fitted
    before = model.statistics.scale_mean.clone()
    assert fit_statistics_scale(ctx, {"server-round": 2}, "a", model, (x * 3).numpy()) is None
    torch.testing.assert_close(model.statistics.scale_mean, before)
    assert "privacy-ledger" not in ctx.state.config_records  # no DP, no ledger


def test_under_dp_the_release_is_in_the_ledger_and_dp_sgd_composes_on_top_of_it():
    model = model_with_statistics()
    x, y = skeletons()
    ctx = context()
    config = {"server-round": 1, "dp-epsilon": 4.0, "dp-delta": 1e-5, "dp-max-grad-norm": 1.0}
    assert fit_statistics_scale(ctx, config, "a", model, x.numpy()) == "dp"
    store = ContextStore(ctx)
    ledger = load(store)
    noise = release_noise(4.0, 1e-5, "rdp")
    assert ledger.history == [(noise, 1.0, 2)]
    assert ledger.releases[0]["what"] == "statistics scale" and ledger.steps == 0
    from privacy.budget_cmd import format_summary, summarize

    assert "released   statistics scale" in format_summary(summarize(ledger), ledger)
    assert ledger.epsilon() == pytest.approx(epsilon_of([(noise, 1.0, 2)], "rdp", 1e-5))
    assert ledger.epsilon() <= SCALE_BUDGET_SHARE * 4.0 + 1e-9
    exact = sequence_statistics(x.double(), LAYOUT, SQRT_EPS).float().mean(0)
    assert not torch.allclose(model.statistics.scale_mean, exact), "the released mean carries noise"

    for p in model.blocks.parameters():  # the DP recipe: frozen graph blocks, a private branch and head
        p.requires_grad_(False)
    blocks = {k: v.clone() for k, v in model.blocks.state_dict().items()}
    proj = model.statistics.proj.weight.clone()
    recipe = TrainConfig(epochs=2, batch_size=8, lr=0.05, schedule="constant", device="cpu")
    settings = DPSettings(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    _, privacy = train_private(model, (x.numpy(), y.numpy()), recipe, settings, store, site="a", run="7",
                               server_round=1, planned_rounds=1, train_fn=train, optimizer_fn=make_optimizer)
    ledger = load(store)
    assert ledger.history[0] == (noise, 1.0, 2) and ledger.steps == 8
    assert privacy["privacy-epsilon"] == pytest.approx(epsilon_of(ledger.history, "rdp", 1e-5))
    assert 3.8 <= privacy["privacy-epsilon"] <= 4.0, "the plan spends what the release left"
    assert not torch.equal(model.statistics.proj.weight, proj)
    for k, v in model.blocks.state_dict().items():
        torch.testing.assert_close(v, blocks[k])


def test_a_release_past_the_budget_is_declined_and_the_decline_is_kept():
    model = model_with_statistics()
    x, _ = skeletons()
    ctx = context()
    store = ContextStore(ctx)
    from privacy.ledger import transaction

    with transaction(store, site="a") as ledger:  # a site that already spent its budget
        ledger.history = [(0.8, 0.25, 400)]
    config = {"server-round": 3, "dp-epsilon": 2.0, "dp-delta": 1e-5}
    with pytest.raises(BudgetExhausted, match="statistics scale"):
        fit_statistics_scale(ctx, config, "a", model, x.numpy())
    ledger = load(store)
    assert len(ledger.declined) == 1 and not ledger.releases
    assert not model.statistics.fitted


def test_release_noise_keeps_the_release_to_its_share_of_the_budget():
    assert release_noise(None, 1e-5, "rdp") == MIN_SCALE_NOISE
    assert release_noise(8.0, 1e-5, "rdp") == MIN_SCALE_NOISE  # 4 already spends less than 1.6
    for target in (3.0, 1.0):
        noise = release_noise(target, 1e-5, "rdp")
        spent = epsilon_of([(noise, 1.0, 2)], "rdp", 1e-5)
        assert spent <= SCALE_BUDGET_SHARE * target + 1e-9
        assert spent > 0.9 * SCALE_BUDGET_SHARE * target  # no more noise than needed
        assert noise > MIN_SCALE_NOISE
    with pytest.raises(ValueError, match="dp-epsilon 0.01"):
        release_noise(0.01, 1e-5, "rdp")
    with pytest.raises(ValueError, match="std positive"):
        model_with_statistics().statistics.set_scale(torch.zeros(num_statistics(LAYOUT)),
                                                     torch.zeros(num_statistics(LAYOUT)))


def test_a_fixed_noise_multiplier_releases_the_scale_at_the_minimum_noise():
    model = model_with_statistics()
    x, _ = skeletons()
    ctx = context()
    assert fit_statistics_scale(ctx, {"dp-noise-multiplier": 1.0}, "a", model, x.numpy()) == "dp"
    assert load(ContextStore(ctx)).history == [(MIN_SCALE_NOISE, 1.0, 2)]


@pytest.mark.slow
def test_a_private_federation_with_the_branch_stays_in_budget_and_shares_only_the_projection(tmp_path):
    """Two rounds of fsar (with MKD) on Flower's simulation engine, DP-SGD at epsilon 3 on
    every site (scale release included): no site declines or passes the budget, and the
    global model carries the trained projection but no site's scale."""
    from pathlib import Path

    from skeletons.atomic import read_arrays
    from server.settings import RunSettings
    from simulations.engine import simulate
    from skeletons.scenario import load_scenario

    path = Path(__file__).parent / "scenarios" / "privacy-tiny.toml"
    scenario = load_scenario(path)
    config = dict(scenario.defaults)
    config.update({"scenario": str(path), "strategy": "fsar", "device": "cpu", "out-dir": str(tmp_path),
                   "num-server-rounds": 2, "dp-epsilon": 3.0, "model-overrides": '{"statistics": true}'})
    results = simulate(scenario, RunSettings.from_run_config(config), quiet=True)
    assert [r["sites_ok"] for r in results["rounds"]] == [3, 3]
    for site in results["privacy"]["sites"].values():
        assert 2.0 < site["epsilon"] <= 3.0 and site["declined_rounds"] == 0
    final = read_arrays(tmp_path / "global.npz")
    assert not any(k.startswith("statistics.scale") for k in final)
    assert np.abs(final["statistics.proj.weight"]).sum() > 0, "the sites trained the shared projection"


@pytest.mark.slow
def test_a_site_that_declines_after_releasing_its_scale_keeps_it_and_pays_once(tmp_path):
    """Budget 2.5 with a fixed noise multiplier of 0.5: in round 1 each site releases its
    scale (a fifth of the budget), then declines DP-SGD (it would pass 15). Round 2 must
    start from the kept scale: a second release (still within the budget) would be spent
    for nothing. Each declining reply reports the epsilon spent, and results.json has it."""
    from pathlib import Path

    from privacy.ledger import epsilon_of
    from server.settings import RunSettings
    from simulations.engine import simulate
    from skeletons.scenario import load_scenario

    path = Path(__file__).parent / "scenarios" / "privacy-tiny.toml"
    scenario = load_scenario(path)
    config = dict(scenario.defaults)
    config.update({"scenario": str(path), "strategy": "fedavg", "device": "cpu", "out-dir": str(tmp_path),
                   "num-server-rounds": 2, "dp-noise-multiplier": 0.5, "dp-epsilon": 2.5,
                   "model-overrides": '{"statistics": true}'})
    results = simulate(scenario, RunSettings.from_run_config(config), quiet=True)
    one_release = epsilon_of([(release_noise(2.5, 1e-5, "rdp"), 1.0, 2)], "rdp", 1e-5)
    assert epsilon_of([(release_noise(2.5, 1e-5, "rdp"), 1.0, 4)], "rdp", 1e-5) < 2.5  # room for a second
    for name, site in results["privacy"]["sites"].items():
        assert site["declined_rounds"] == 2, name
        assert site["epsilon"] == pytest.approx(one_release), f"site {name} released its scale more than once"
