"""DP-SGD on a site: Opacus accepts the model, gradients are clipped and noised, the
budget composes over rounds, a site at its budget declines and the round goes on."""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant

from client.trainer import TrainConfig, make_optimizer, train
from models import ModelConfig, build_model
from models.roles import split_state
from privacy.dp import (
    PRIVACY_METRICS,
    BudgetExhausted,
    DPSettings,
    check_model,
    noise_for_budget,
    run_config_keys,
    train_private,
    train_site,
)
from privacy.ledger import FileStore, epsilon_of, read_ledger
from skeletons.layouts import get_layout

TINY = ModelConfig(channels=(8, 8), strides=(1, 2), temporal_kernel=3, streams=("joint",), norm_groups=4)
LAYOUT = get_layout("kinect-v1")


def tiny_model(classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(LAYOUT, classes, 1, TINY)


def tiny_data(n: int = 24, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 20, 1, generator=g), torch.randint(0, classes, (n,), generator=g)


def recipe(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, lr=0.05, schedule="constant", device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def context(node_config=None) -> Context:
    return Context(run_id=7, node_id=1, node_config=dict(node_config or {}), state=RecordDict(), run_config={})


# ------------------------------------------------------------------------ the model

def test_opacus_validator_accepts_the_fsar_model_and_refuses_batchnorm():
    check_model(build_model(LAYOUT, 10, 2, ModelConfig.preset("slim")))
    with pytest.raises(ValueError, match="BatchNorm"):
        check_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)))


# ------------------------------------------------------------------ clipping and noise

def test_gradients_are_clipped_per_sample_and_noised_at_the_expected_scale():
    torch.manual_seed(0)
    model = tiny_model()
    x, y = tiny_data(16)
    x = x * 50  # large inputs: every per-sample gradient is far above the bound
    clip, z = 0.01, 2.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    private, dp_opt, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=z, max_grad_norm=clip)
    params = [p for p in private.parameters() if p.requires_grad]

    dp_opt.zero_grad()
    torch.nn.functional.cross_entropy(private(x), y).backward()
    per_sample = torch.cat([p.grad_sample.reshape(16, -1) for p in params], dim=1)
    norms = per_sample.norm(dim=1)
    assert norms.min() > 10 * clip, "the test needs gradients above the bound"
    clean_mean = per_sample.mean(0)

    assert dp_opt.pre_step()  # clip, accumulate, add noise, scale
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = per_sample * factors[:, None]
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-5)).all()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in params])
    torch.testing.assert_close(summed, clipped.sum(0), rtol=1e-4, atol=1e-7)

    update = torch.cat([p.grad.reshape(-1) for p in params])
    noise = update * dp_opt.expected_batch_size - summed
    assert noise.numel() > 2000
    assert noise.std().item() == pytest.approx(z * clip, rel=0.08)
    assert abs(noise.mean().item()) < 4 * z * clip / math.sqrt(noise.numel())
    # the private update is not the clean mean gradient
    assert (update - clean_mean).norm() > 0.5 * clean_mean.norm()


# -------------------------------------------------------------- budget over rounds

def run_rounds(store, settings, rounds, planned, data=None, model=None, first=1, run="7"):
    x, y = data or tiny_data()
    model = model or tiny_model()
    out = []
    for r in range(first, first + rounds):
        out.append(train_private(model, (x.numpy(), y.numpy()), recipe(seed=r), settings, store, site="a", run=run,
                                 server_round=r, planned_rounds=planned, train_fn=train, optimizer_fn=make_optimizer))
    return out


def test_ledger_after_private_rounds_matches_one_accountant_and_reloads(tmp_path):
    path = tmp_path / "ledger.json"
    settings = DPSettings(noise_multiplier=1.3, max_grad_norm=1.0)
    results = run_rounds(FileStore(path), settings, rounds=3, planned=3)
    # 24 samples, batch 8: sample rate 1/3, 3 steps per round
    reference = RDPAccountant()
    for _ in range(9):
        reference.step(noise_multiplier=1.3, sample_rate=1 / 3)
    ledger = read_ledger(path)
    assert ledger.steps == 9
    assert ledger.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert results[-1][1]["privacy-epsilon"] == pytest.approx(ledger.epsilon())
    assert [r[1]["privacy-epsilon"] for r in results] == sorted(r[1]["privacy-epsilon"] for r in results)
    # a restart: the next round composes on top of the file, not from zero
    run_rounds(FileStore(path), settings, rounds=1, planned=4, first=4)
    reference.history = [(1.3, 1 / 3, 12)]
    assert read_ledger(path).epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_target_epsilon_plans_noise_and_the_site_declines_past_it(tmp_path):
    path = tmp_path / "ledger.json"
    settings = DPSettings(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    results = run_rounds(FileStore(path), settings, rounds=2, planned=2)
    ledger = read_ledger(path)
    assert 3.9 <= ledger.epsilon() <= 4.0, "the plan spends (almost) the whole budget over the planned rounds"
    assert results[0][0]["privacy"]["noise_multiplier"] == pytest.approx(ledger.plan["noise_multiplier"])
    with pytest.raises(BudgetExhausted, match="over the budget 4.0") as stop:
        run_rounds(FileStore(path), settings, rounds=1, planned=2, first=3)
    assert stop.value.metrics == {"privacy-epsilon": pytest.approx(ledger.epsilon()), "privacy-dp": 1.0,
                                  "privacy-declined": 1.0}
    after = read_ledger(path)
    assert after.steps == ledger.steps, "a declined round spends nothing"
    assert after.declined[-1]["round"] == 3 and "over the budget" in after.declined[-1]["reason"]


def test_a_new_run_spreads_what_is_left_unless_that_needs_more_noise_than_the_site_allows(tmp_path):
    path = tmp_path / "ledger.json"
    run_rounds(FileStore(path), DPSettings(epsilon=4.0), rounds=2, planned=2)
    spent = read_ledger(path)
    capped = DPSettings(epsilon=4.0, max_noise_multiplier=10.0)
    with pytest.raises(BudgetExhausted, match="needs noise multiplier .* above dp-max-noise-multiplier 10: "
                                              "the update would be mostly noise"):
        run_rounds(FileStore(path), capped, rounds=1, planned=2, run="8")
    after = read_ledger(path)
    assert after.steps == spent.steps and after.declined[-1]["run"] == "8"
    # without the bound the same new run trains on what is left, with far more noise
    run_rounds(FileStore(path), DPSettings(epsilon=4.0), rounds=1, planned=2, run="8")
    trained = read_ledger(path)
    assert trained.plan["run"] == "8" and trained.plan["noise_multiplier"] > 10.0
    assert spent.epsilon() < trained.epsilon() <= 4.0


def test_max_noise_multiplier_settings_are_checked():
    assert DPSettings.resolve(({"dp-max-noise-multiplier": "inf"}, "run config")).max_noise_multiplier is None
    assert DPSettings.resolve(({"dp-max-noise-multiplier": 20}, "site config")).max_noise_multiplier == 20.0
    for bad, message in (("x", "dp-max-noise-multiplier = 'x'"), ("0", "must be positive, got 0.0")):
        with pytest.raises(ValueError, match=message):
            DPSettings.resolve(({"dp-max-noise-multiplier": bad}, "run config"))
    with pytest.raises(ValueError, match="dp-noise-multiplier 30 is above dp-max-noise-multiplier 20"):
        DPSettings(noise_multiplier=30.0, max_noise_multiplier=20.0)


def test_noise_for_the_budget_left_respects_past_spending():
    history = [(1.0, 0.1, 100)]
    spent = epsilon_of(history, "rdp", 1e-5)
    z = noise_for_budget(history, "rdp", spent + 2.0, 1e-5, 0.1, 200)
    total = epsilon_of(history + [(z, 0.1, 200)], "rdp", 1e-5)
    assert spent + 2.0 - 0.01 <= total < spent + 2.0
    with pytest.raises(BudgetExhausted, match="budget spent"):
        noise_for_budget(history, "rdp", spent * 0.9, 1e-5, 0.1, 10)


def test_dp_sgd_with_mkd_teacher_privatizes_student_only(tmp_path):
    model = tiny_model()
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared, _ = split_state(before, "fsar")
    x, y = tiny_data()
    metrics, privacy = train_private(
        model, (x.numpy(), y.numpy()), recipe(grains=[1], lambda_mg=0.5, lambda_kd=0.5, mu=0.01),
        DPSettings(noise_multiplier=1.0), FileStore(tmp_path / "l.json"), site="a", run="1", server_round=2,
        planned_rounds=2, train_fn=train, optimizer_fn=make_optimizer, teacher=teacher, global_shared=shared)
    assert math.isfinite(metrics["loss"]) and privacy["privacy-dp"] == 1.0
    after = model.state_dict()
    for key in ("blocks.0.gcn.topology.unique", "blocks.0.gcn.topology.influence", "head.weight"):
        assert not torch.equal(before[key], after[key]), f"{key} (shared or personal) was not trained"
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), "the teacher must stay frozen"
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


# ------------------------------------------------------------ the site's entry point

def test_train_site_reads_run_and_site_settings_and_keeps_reply_keys_uniform(tmp_path):
    x, y = tiny_data()
    plain = train_site(context(), {"server-round": 1, "num-server-rounds": 2}, "a", tiny_model(),
                       (x.numpy(), y.numpy()), recipe(), train_fn=train, optimizer_fn=make_optimizer)[1]
    ledger = tmp_path / "site" / "ledger.json"
    node = {"privacy-ledger": str(ledger), "dp-epsilon": 5.0}  # the site's own, stricter budget
    config = {"server-round": 1, "num-server-rounds": 2, "dp-epsilon": "50", "dp-max-grad-norm": 0.5}
    private = train_site(context(node), config, "a", tiny_model(), (x.numpy(), y.numpy()), recipe(),
                         train_fn=train, optimizer_fn=make_optimizer)[1]
    assert set(plain) == set(private) == set(PRIVACY_METRICS)
    assert plain == {"privacy-epsilon": 0.0, "privacy-dp": 0.0, "privacy-declined": 0.0}
    stored = read_ledger(ledger)
    assert stored.target_epsilon == 5.0 and stored.rounds[0]["max_grad_norm"] == 0.5
    assert 0 < private["privacy-epsilon"] <= 5.0


def test_run_config_keys_are_checked_at_the_coordinator():
    keys = run_config_keys({"dp-epsilon": "8", "dp-delta": 1e-5, "other": 1}, 15)
    assert keys == {"dp-epsilon": "8", "dp-delta": 1e-5, "num-server-rounds": 15}
    with pytest.raises(ValueError, match="dp-delta"):
        DPSettings.resolve(({"dp-delta": "2"}, "run config"))
    with pytest.raises(ValueError, match="dp-max-grad-norm = 'x'"):
        run_config_keys({"dp-max-grad-norm": "x"}, 3)
    assert DPSettings.resolve(({"dp-epsilon": "inf"}, "run config")).enabled is False


# ------------------------------------------------- declining: the round completes

def _reply(node: int, arrays: ArrayRecord, n: int, declined: str | None = None) -> Message:
    site = {"site-name": f"site-{node}"}
    if declined:
        site["declined"] = declined
    metrics = {"num-examples": n, "train-loss": 0.1, "train-accuracy": 0.5, "train-seconds": 1.0,
               "privacy-epsilon": 1.0, "privacy-dp": 1.0, "privacy-declined": float(bool(declined))}
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics),
                                       "site": ConfigRecord(site)}), metadata=meta)


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord(OrderedDict(w=Array(np.full((2, 3), value, np.float32))))


def test_a_declining_site_is_left_out_and_the_round_completes():
    from strategies.registry import StrategyOptions, build_strategy

    strategy = build_strategy("fedavg", StrategyOptions(shared_label_set=True), eval_every=1, num_rounds=2, num_sites=3)
    strategy._expected = _arrays(0.0)
    strategy._round_started = time.perf_counter()
    replies = [_reply(1, _arrays(1.0), 10), _reply(2, _arrays(3.0), 10),
               _reply(3, _arrays(0.0), 0, declined="round 2 would raise epsilon from 7.9 to 8.3, over the budget 8")]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    record = strategy.record_for(2)
    assert record.sites_ok == 2 and record.sites_failed == 1
    assert "site-3" in record.dropped[0] and "over the budget" in record.dropped[0]


@pytest.mark.slow
def test_sites_at_their_budget_decline_in_a_simulation_and_the_rounds_go_on(tmp_path):
    """Three sites on Flower's simulation engine with one budget (epsilon 3, fixed noise 1.5).
    Sites a and b (18 examples: sample rate 1/3) reach epsilon 2.77 in round 1 and would
    reach 3.64 in round 2, so they decline it; site c (36 examples: rate 1/5) stays at
    2.88 after round 2 and trains on; round 2 aggregates c alone."""
    from pathlib import Path

    from server.settings import RunSettings
    from simulations.engine import simulate
    from skeletons.scenario import load_scenario

    path = Path(__file__).parent / "scenarios" / "privacy-tiny.toml"
    scenario = load_scenario(path)
    config = dict(scenario.defaults)
    config.update({"scenario": str(path), "strategy": "fedavg", "device": "cpu", "out-dir": str(tmp_path),
                   "num-server-rounds": 2, "dp-noise-multiplier": 1.5, "dp-epsilon": 3.0})
    results = simulate(scenario, RunSettings.from_run_config(config), quiet=True)
    first, second = results["rounds"]
    assert first["sites_ok"] == 3 and first["dropped"] == []
    assert second["sites_ok"] == 1
    assert sorted(d.split(":")[0] for d in second["dropped"]) == ["a", "b"]
    assert all("declined the round" in d and "over the budget 3.0" in d for d in second["dropped"])
    sites = results["privacy"]["sites"]
    assert sites["a"]["declined_rounds"] == 1 and sites["b"]["declined_rounds"] == 1
    assert sites["c"]["declined_rounds"] == 0 and 2.5 < sites["c"]["epsilon"] <= 3.0
    assert sites["a"]["epsilon"] == pytest.approx(sites["b"]["epsilon"]) and sites["a"]["epsilon"] < 3.0
    assert all(s["final_accuracy"] is not None for s in results["sites"].values()), "every site still evaluates"


def test_dp_features_bench_spends_the_target_and_reports_both_runs(tmp_path) -> None:
    """The feature-classifier DP benchmark: every site trained twice, the DP run at the
    target epsilon (the accountant's, not the plan's), results written as JSON."""
    import json
    from pathlib import Path

    from privacy import dp_features_bench

    tiny = Path(__file__).parent / "scenarios" / "tiny.toml"
    out = tmp_path / "dpf.json"
    assert dp_features_bench.main(["--scenario", str(tiny), "--epsilon", "3", "--epochs", "4", "--batch-size", "8",
                                   "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sites"]) == {"front", "side"}
    for site in report["sites"].values():
        assert 2.5 < site["dp"]["epsilon"] <= 3.0 + 1e-6
        assert 0.0 <= site["no_dp"] <= 1.0 and 0.0 <= site["dp"]["top1"] <= 1.0
    assert report["settings"]["standardize"] == "synthetic"


def test_dp_features_bench_pays_the_scale_releases_from_the_same_budget(tmp_path) -> None:
    """With ``--standardize dp`` the two Gaussian releases of the feature scale and DP-SGD
    share one epsilon: training gets more noise than it would alone, and the accountant's
    total (releases included) stays at the target."""
    import json
    from pathlib import Path

    from opacus.accountants import RDPAccountant

    from privacy import dp_features_bench

    releases = [(4.0, 1.0, 2)]  # the bench sizes its DP-SGD noise as a site's ledger does
    alone = noise_for_budget([], "rdp", 8.0, 1e-5, 0.1, 400)
    shared = noise_for_budget(releases, "rdp", 8.0, 1e-5, 0.1, 400)
    assert shared > alone
    accountant = RDPAccountant()
    accountant.history = [*releases, (shared, 0.1, 400)]
    assert 7.9 < accountant.get_epsilon(1e-5) <= 8.0 + 1e-6
    out = tmp_path / "dpf.json"
    tiny = Path(__file__).parent / "scenarios" / "tiny.toml"
    assert dp_features_bench.main(["--scenario", str(tiny), "--epsilon", "3", "--epochs", "4", "--batch-size", "8",
                                   "--standardize", "dp", "--out", str(out)]) == 0
    for site in json.loads(out.read_text())["sites"].values():
        assert 2.5 < site["dp"]["epsilon"] <= 3.0 + 1e-6


def test_dp_noise_bench_reports_each_noise_level_with_the_epsilon_it_spends(tmp_path, capsys) -> None:
    """The noise benchmark trains one site per noise level over the scenario's rounds and
    reports the epsilon Opacus's accountant gives those steps (infinite for clipping alone)."""
    import argparse
    import json
    from pathlib import Path

    from opacus.accountants.utils import get_noise_multiplier

    from privacy import dp_noise_bench

    tiny = Path(__file__).parent / "scenarios" / "tiny.toml"
    out = tmp_path / "noise.json"
    assert dp_noise_bench.main(["--scenario", str(tiny), "--site", "side", "--noise", "off,0,0.8,4",
                                "--rounds", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [r["noise_multiplier"] for r in runs] == [None, 0.0, 0.8, 4.0]
    assert runs[0]["epsilon"] is None and math.isinf(runs[1]["epsilon"])
    assert runs[2]["epsilon"] > runs[3]["epsilon"] > 0
    assert report["steps"] == 2 * report["recipe"]["epochs"] * round(1 / report["sample_rate"])
    # the reported epsilon is the one a site's plan targets with that noise
    z = get_noise_multiplier(target_epsilon=runs[3]["epsilon"], target_delta=1e-5,
                             sample_rate=report["sample_rate"], steps=report["steps"], epsilon_tolerance=0.01)
    assert z == pytest.approx(4.0, rel=0.05)
    assert all(0.0 <= r["top1"] <= 1.0 for r in runs)
    with pytest.raises(SystemExit, match="'nowhere' is not a site of .*front, side"):
        dp_noise_bench.main(["--scenario", str(tiny), "--site", "nowhere"])
    with pytest.raises(argparse.ArgumentTypeError, match="'lots' is neither a number nor 'off'"):
        dp_noise_bench.parse_noise("0.1,lots")
    with pytest.raises(SystemExit):
        dp_noise_bench.main(["--scenario", "hetero-datasets", "--site", "nw-ucla"])
    assert "reads real data sets: give --data-root DIR" in capsys.readouterr().err
