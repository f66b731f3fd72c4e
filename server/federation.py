"""Drive one federated run: initial model, strategy, rounds, results.

Shared by the simulation (``fedsar-sim run``), ``flwr run .`` and the deployed
coordinator; each gives it a Flower ``Grid`` and :class:`RunSettings`.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from models.roles import check_frozen_blocks, check_global_mix, check_shared_blocks
from privacy.class_means import check_head_start_model, check_releases_fit
from server.checkpoint import DeploymentHooks, resumes
from server.loop import run_rounds
from server.settings import RunSettings
from skeletons.atomic import write_arrays, write_json
from server.warm_start import check_frozen_loaded, log_warm_start, warm_start
from skeletons.layouts import get_layout
from skeletons.scenario import Scenario, resolve_scenario
from strategies.baselines import LocalOnly
from strategies.registry import StrategyOptions, build_strategy
from strategies.screening import RoundRecord, ScreenedRounds

log = logging.getLogger(__name__)

ProgressFn = Callable[[RoundRecord, int], None]


def model_config_for(scenario: Scenario, preset: str, overrides: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """ModelConfig fields: the preset, then the scenario's overrides, then the run's
    ``model-overrides`` (a JSON object, e.g. a smaller network for a CPU trial)."""
    from models import ModelConfig

    base = asdict(ModelConfig.preset(preset))
    base.update(scenario.model)
    try:
        ModelConfig.from_dict(base)
    except (ValueError, TypeError) as err:  # a misspelt field of the scenario's [model] table
        raise ValueError(f"scenario {scenario.source or scenario.name}: [model]: {err}") from None
    if overrides:
        try:
            extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
            if not isinstance(extra, dict):
                raise ValueError(f"{extra!r} is not an object")
            base.update(extra)
            ModelConfig.from_dict(base)
        except (ValueError, TypeError) as err:
            raise ValueError(f"run config 'model-overrides' {overrides!r}: {err}") from None
    return base


def num_classes_for(scenario: Scenario, settings: RunSettings) -> int:
    """Classes of the one shared head, or a placeholder when heads stay on the sites."""
    if not scenario.shared_label_set:
        return 1
    if scenario.num_classes is not None:
        return scenario.num_classes
    from skeletons.site_data import site_dataset

    return len(site_dataset(scenario.sites[0], settings.data_root or None, scenario.layout, settings.seed).classes)


def initial_arrays(scenario: Scenario, settings: RunSettings, model_config: dict[str, Any], policy: str) -> ArrayRecord:
    """The shared parameters of a freshly initialized global model."""
    from models import ModelConfig, build_model
    from models.roles import split_state

    torch.manual_seed(settings.seed)
    model = build_model(
        get_layout(scenario.layout), num_classes_for(scenario, settings), scenario.num_persons, ModelConfig(**model_config)
    )
    shared, _ = split_state(OrderedDict(model.state_dict()), policy=policy, shared_blocks=settings.shared_blocks)
    return ArrayRecord(OrderedDict(shared))


def starting_arrays(
    scenario: Scenario, settings: RunSettings, model_config: dict[str, Any], policy: str, initial_model: str
) -> tuple[ArrayRecord, list[str]]:
    """What round 1 sends when the run starts from ``initial_model``.

    Normally the warm-started shared parameters. ``local`` shares nothing, so that every
    site would start fresh and a warm-started federation could not be compared with
    training alone from the same start: there the warm-started model (without the heads
    when sites have their own label sets) is every site's starting point, sent once with
    the site's first train message (``LocalOnly.start_model``).
    """
    if policy == "local":
        policy = "fedavg" if scenario.shared_label_set else "fedavg-local-heads"
    arrays, kept_fresh = warm_start(initial_arrays(scenario, settings, model_config, policy), initial_model)
    check_frozen_loaded(kept_fresh, settings.frozen_blocks, initial_model)
    return arrays, kept_fresh


def summarize(scenario: Scenario, settings: RunSettings, history: list[RoundRecord]) -> dict[str, Any]:
    """The results document of DESIGN.md's simulation results contract."""
    rounds = []
    last_eval: dict[str, dict[str, float]] = {}
    last_trained: dict[str, float] = {}
    for rec in history:
        accs = [m["eval-accuracy"] for m in rec.evaluate.values() if "eval-accuracy" in m]
        trained = {k: m["trained-accuracy"] for k, m in rec.train.items() if "trained-accuracy" in m}
        if rec.evaluate:
            last_eval = rec.evaluate
        last_trained.update(trained)
        rounds.append({
            "round": rec.round,
            "mean_accuracy": statistics.fmean(accs) if accs else None,
            "site_accuracy": {k: v.get("eval-accuracy") for k, v in rec.evaluate.items()},
            "mean_trained_accuracy": statistics.fmean(trained.values()) if trained else None,
            "site_trained_accuracy": trained,
            "wall_s": rec.wall_s,
            "compute_s": rec.compute_s,
            "compute_max_s": rec.compute_max_s,
            "uplink_bytes": rec.uplink_bytes,
            "downlink_bytes": rec.downlink_bytes,
            "sites_asked": rec.sites_asked,
            "sites_ok": rec.sites_ok,
            "sites_failed": rec.sites_failed,
            "dropped": rec.dropped,
            "train_loss": {k: v.get("train-loss") for k, v in rec.train.items()},
        })
    sites = {
        name: {"final_accuracy": m.get("eval-accuracy"), "trained_accuracy": last_trained.get(name),
               "test_examples": m.get("num-examples")}
        for name, m in last_eval.items()
    }
    from privacy.site_anonymization import SiteAnonymization

    for spec in scenario.sites:  # a simulated site's anonymization (a deployed site keeps its own to itself)
        if spec.anonymize is not None and spec.name in sites:
            sites[spec.name]["anonymize"] = SiteAnonymization.parse(spec.anonymize, spec.name).to_dict()
    finals = [s["final_accuracy"] for s in sites.values() if s["final_accuracy"] is not None]
    trained_finals = [s["trained_accuracy"] for s in sites.values() if s["trained_accuracy"] is not None]
    return {
        "scenario": scenario.name,
        "strategy": settings.strategy,
        "settings": settings.to_run_config(),
        "sites": sites,
        "final": {
            "mean_accuracy": statistics.fmean(finals) if finals else None,
            "std_accuracy": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
            # each site's model right after its last local training (before averaging)
            "mean_trained_accuracy": statistics.fmean(trained_finals) if trained_finals else None,
            "rounds": len(history),
        },
        # False while the run is going (results.json is rewritten after every round)
        "complete": False,
        "rounds": rounds,
        "uplink_parameters": sorted({k for rec in history for k in rec.received_keys}),
    }


def with_run_anonymization(scenario: Scenario, value: Any) -> Scenario:
    """The run config's ``anonymize`` for every simulated site without its own setting.

    Deployed sites read theirs from their ``site.toml`` and ignore the specs sent to them."""
    if value is None or value == "":
        return scenario
    from privacy.site_anonymization import SiteAnonymization

    SiteAnonymization.parse(value, "run config: anonymize")  # a bad value fails before any round
    for site in scenario.sites:
        if site.anonymize is None:
            site.anonymize = value
    return scenario


def check_group_heads(settings: RunSettings, privacy_report: dict[str, Any]) -> bool:
    """Whether the run averages heads within label groups; refuses what cannot carry them.

    Group heads are keys only some sites send, so they need a plain weighted average:
    server momentum, central DP (clipping of each site's whole update) and secure
    aggregation (a sum over vectors of one shape) all assume every site sends every key.
    """
    if not settings.group_heads:
        return False
    problems = []
    if settings.strategy == "local":
        problems.append("strategy 'local' shares nothing")
    if settings.server_momentum > 0:
        problems.append(f"server-momentum = {settings.server_momentum}")
    for option, name in (("central_dp", "central DP"), ("secure_aggregation", "secure aggregation")):
        if privacy_report.get(option):
            problems.append(name)
    if problems:
        raise ValueError(f"run config 'group-heads' does not combine with: {'; '.join(problems)}")
    return True


def check_run_settings(settings: RunSettings, model_config: dict[str, Any]) -> None:
    """A ValueError naming the run-config key whose value the run cannot take (shared or
    frozen blocks beyond the model's depth, a global mix without personal epochs, a
    class-mean head start without the statistics branch, an unknown learning-rate
    schedule, personal epochs under DP-SGD, an epsilon too small for the releases). The
    simulation calls it before the engine starts; a deployed coordinator before round 1."""
    from privacy.dp import DPSettings, check_personal_epochs
    from strategies.screening import check_lr_schedule

    depth = len(model_config["channels"])
    check_shared_blocks(settings.shared_blocks, depth)
    check_frozen_blocks(settings.frozen_blocks, depth)
    check_global_mix(settings.global_mix, settings.personal_epochs)
    check_head_start_model(settings.head_start, model_config)
    run_config = settings.to_run_config()
    check_releases_fit(run_config, model_config)
    check_lr_schedule(settings.lr_schedule)
    check_personal_epochs(settings.personal_epochs, DPSettings.resolve((run_config, "run config")).enabled)


def run_federation(grid: Grid, settings: RunSettings, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run ``settings.num_server_rounds`` rounds of ``settings.strategy`` on the scenario."""
    scenario = with_run_anonymization(resolve_scenario(settings.scenario, settings.paths_file or None),
                                      settings.extra.get("anonymize"))
    model_config = model_config_for(scenario, settings.model_preset, settings.extra.get("model-overrides"))
    check_run_settings(settings, model_config)
    if settings.frozen_blocks and not settings.extra.get("initial-model"):
        log.warning("frozen-blocks = %d without initial-model: the sites keep randomly initialized features "
                    "in those blocks", settings.frozen_blocks)
    options = StrategyOptions(
        mu=settings.mu, mkd=settings.mkd, grains=settings.grains, lambda_mg=settings.lambda_mg,
        lambda_kd=settings.lambda_kd, temperature=settings.temperature,
        server_momentum=settings.server_momentum, shared_label_set=scenario.shared_label_set,
        shared_blocks=settings.shared_blocks, share_head=settings.share_head,
        personal_norms=settings.personal_norms,
    )
    strategy = build_strategy(
        settings.strategy, options, eval_every=settings.eval_every, num_rounds=settings.num_server_rounds,
        num_sites=len(scenario.sites), fraction_train=settings.fraction_train, min_sites=settings.min_sites or None,
        lr_schedule=settings.lr_schedule,
    )
    assert isinstance(strategy, ScreenedRounds)
    policy = strategy.client_config["policy"]  # the one split the sites are told to use
    if settings.extra.get("initial-model"):
        initial_model = str(settings.extra["initial-model"])
        arrays, kept_fresh = starting_arrays(scenario, settings, model_config, policy, initial_model)
        log_warm_start(initial_model, arrays, kept_fresh)
    else:
        arrays = initial_arrays(scenario, settings, model_config, policy)
    if isinstance(strategy, LocalOnly):  # sites get the start model, the global record stays empty
        strategy.start_model, arrays = arrays, ArrayRecord()
    hooks = DeploymentHooks.from_settings(settings)  # deployed coordinator: checkpoints, resume, status
    first_round = 1
    if hooks is not None:
        first_round, arrays = hooks.start(strategy, arrays)
    train_config = ConfigRecord({
        "site-specs": scenario.site_specs_json(),
        "layout": scenario.layout,
        "num-frames": scenario.num_frames,
        "num-persons": scenario.num_persons,
        "model-config": json.dumps(model_config),
        "data-root": settings.data_root,
        "seed": settings.seed,
        "local-epochs": settings.local_epochs,
        "personal-epochs": settings.personal_epochs,
        "frozen-blocks": settings.frozen_blocks,
        "batch-size": settings.batch_size,
        "learning-rate": settings.learning_rate,
        "optimizer": settings.optimizer,
        "keep-optimizer-state": settings.keep_optimizer_state,
        **settings.augmentation(),
        "global-mix": settings.global_mix,
        "device": settings.device,
        "federation": str(settings.extra.get("federation", "")),
        "eval-trained": settings.eval_trained,
        "group-heads": settings.group_heads,
        "head-start": settings.head_start,
    })
    out = Path(settings.out_dir) if settings.out_dir else None
    from privacy.coordinator import coordinator_privacy  # site DP keys, central DP, secure aggregation

    privacy = coordinator_privacy(
        strategy, grid, settings.extra, num_rounds=settings.num_server_rounds, num_sites=len(scenario.sites),
        fraction_train=settings.fraction_train, out_dir=out,
        resume=resumes(settings.extra),
    )
    for key, value in privacy.train_keys.items():
        train_config[key] = value
    strategy.group_heads = check_group_heads(settings, privacy.report())  # personal epochs: check_run_settings
    started = time.perf_counter()

    def on_round_end(server_round: int, global_arrays: ArrayRecord) -> None:
        record = strategy.record_for(server_round)
        if progress is not None:
            progress(record, settings.num_server_rounds)
        else:  # a ServerApp of its own (flwr run, fedsar-server): the round's line goes to its log
            log.info("%s", record.progress_line(settings.num_server_rounds))
        if out is not None:
            write_json(out / "results.json", summarize(scenario, settings, strategy.history))
            write_arrays(out / "global.npz", {k: v.numpy() for k, v in global_arrays.items()})
        if hooks is not None:
            hooks.round_end(server_round, global_arrays, strategy)

    strategy.ask_groups(privacy.grid, train_config, settings.timeout_s)  # group-heads: who shares a label list
    final = run_rounds(
        privacy.strategy, privacy.grid, arrays, first_round, settings.num_server_rounds, train_config,
        ConfigRecord(dict(train_config)), on_round_end, timeout=settings.timeout_s,
    )
    if hooks is not None:
        hooks.finish(strategy)
    results = summarize(scenario, settings, strategy.history)
    results["complete"] = True
    results["total_wall_s"] = time.perf_counter() - started
    results["model"] = {"layout": scenario.layout, "config": model_config, "policy": policy,
                        "shared_blocks": settings.shared_blocks}
    results["privacy"] = privacy.report()
    if out is not None:
        write_json(out / "results.json", results)
        write_arrays(out / "global.npz", {k: v.numpy() for k, v in final.items()})
        write_json(out / "global.json", results["model"])
    return results
