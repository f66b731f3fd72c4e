"""``fedsar-sim run``: one scenario, one strategy, on Flower's simulation engine."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from server.settings import RunSettings, scenario_defaults
from simulations.report import site_table
from skeletons.clikit import UserError, counted
from skeletons.scenario import (Scenario, ScenarioError, builtin_scenarios, check_copies_augmented,
                                recipe_augments, resolve_scenario)
from strategies.registry import STRATEGY_NAMES, client_policy


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``compare``."""
    parser.add_argument("--scenario", default="synthetic", help=f"built-in ({', '.join(builtin_scenarios())}) or a .toml path")
    parser.add_argument("--data-root", default="", help="folder holding the data sets (nw-ucla/, msr-action3d/, ...)")
    parser.add_argument("--paths", default="", help="TOML naming where each site's data set lives (fsar-paper)")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (scenario default if omitted)")
    parser.add_argument("--local-epochs", type=int, default=None)
    parser.add_argument("--personal-epochs", type=int, default=None,
                        help="epochs a site first trains only its personal part on the received model, "
                             "then local-epochs of the shared part alone (FedRep's order; 0: off)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="site learning rate")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                        help="site learning rate over rounds (scenario default, else constant)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--model-preset", default=None, help="slim (CPU default) or wide")
    parser.add_argument("--mu", type=float, default=None, help="proximal term for fsar / fedprox")
    parser.add_argument("--no-mkd", action="store_true", help="fsar without multi-grain distillation")
    parser.add_argument("--grains", default=None, help="MKD grains, e.g. 1,2")
    parser.add_argument("--shared-blocks", type=int, default=None,
                        help="share only blocks 1..K with the server; deeper blocks stay on the sites "
                             "(0, the default: every block)")
    parser.add_argument("--frozen-blocks", type=int, default=None,
                        help="sites do not train the input stage and blocks 1..K (features from "
                             "--initial-model), so DP noise falls on fewer parameters (0, the default: train all)")
    parser.add_argument("--global-mix", type=float, default=None,
                        help="sites start each round at own + MIX * (global - own) of the shared parameters "
                             "(1, the default: the global ones, as FSAR; e.g. 0.5 keeps half of their own)")
    parser.add_argument("--share-head", action="store_true", default=None,
                        help="fsar over sites with one label set: average the classifier head too "
                             "(FSAR as published keeps it on each site; other strategies share it "
                             "whenever the label set is shared)")
    parser.add_argument("--group-heads", action="store_true", default=None,
                        help="sites whose label sets are identical average their classifier heads with "
                             "each other (where the policy keeps heads on the sites); under DP-SGD this "
                             "pools the classifier of small sites with one label set")
    parser.add_argument("--keep-optimizer-state", action="store_true", default=None,
                        help="sites keep their optimizer's state (AdamW's moments) from one round to the "
                             "next instead of building it afresh; under DP-SGD this spares each round the "
                             "noisy restart of Adam's estimates")
    from privacy.class_means import HEAD_START_MODES

    parser.add_argument("--head-start", choices=HEAD_START_MODES, default=None,
                        help="class-means: each site starts its head from its class means of the statistics "
                             "branch (one Gaussian release under DP, up to 0.4 of epsilon), then trains "
                             "(random, the default: the usual initialization)")
    parser.add_argument("--personal-norms", action="store_true", default=None,
                        help="fsar: keep the normalization layers' parameters on each site too, as "
                             "fedbn does for fedavg (FSAR's split averages them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other run-config key (docs/DESIGN.md, \"Run config\", lists them)")
    parser.add_argument("--private-recipe", action="store_true",
                        help="the settings that keep the most accuracy under DP-SGD: a warm start on the "
                             "built-in synthetic data (built once and cached), every graph block frozen, the "
                             "statistics branch, batch 128, AdamW 0.005, 5 local epochs, group heads, kept "
                             "optimizer state, PRV accountant, heads started from class means, and on the "
                             "sites that augment four copies per sequence from 32 pooled views; options given "
                             "explicitly win (docs/privacy.md)")
    parser.add_argument("--initial-model", default=None,
                        help="start from the shared parameters of a saved global model (a global.npz or the "
                             "--out folder of an earlier run); parameters of another name or shape stay fresh")
    parser.add_argument("--anonymize", choices=("none", "bones", "learned"), default=None,
                        help="every site without its own setting trains on anonymized sequences "
                             "(learned: each site fits its anonymizer on its training split first)")
    parser.add_argument("--site-cpus", type=float, default=None,
                        help="CPUs the engine reserves per site (overrides the scenario's num_cpus); "
                             "e.g. the machine's core count to train one site at a time")
    privacy = parser.add_argument_group("privacy (see docs/privacy.md)")
    privacy.add_argument("--dp-epsilon", default=None, help="DP-SGD on every site: target epsilon for the run (inf: off)")
    privacy.add_argument("--dp-delta", type=float, default=None, help="DP-SGD delta (default 1e-5)")
    privacy.add_argument("--dp-max-grad-norm", type=float, default=None, help="DP-SGD per-sample clipping norm")
    privacy.add_argument("--dp-noise-multiplier", type=float, default=None, help="DP-SGD noise multiplier (instead of a target)")
    privacy.add_argument("--central-dp-noise", type=float, default=None, help="central DP noise multiplier (turns it on)")
    privacy.add_argument("--central-dp-clip", type=float, default=None, help="central DP clipping norm of a site's update")
    privacy.add_argument("--central-dp-clipping", choices=("server", "client"), default=None,
                         help="where site updates are clipped (client with --secagg)")
    privacy.add_argument("--secagg", action="store_true", default=None, help="secure aggregation (SecAgg+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--strategy", default="fsar", choices=STRATEGY_NAMES)
    parser.add_argument("--out", default="runs/latest", help="output folder for results.json and the global model")


def settings_from_args(args: argparse.Namespace, strategy: str, out: Path) -> RunSettings:
    """Scenario defaults, then command-line options, as RunSettings."""
    try:
        scenario = resolve_scenario(args.scenario, args.paths or None)
    except ScenarioError as err:
        raise UserError(str(err)) from None
    if scenario.needs_data_root and not args.data_root:
        raise UserError(f"scenario {scenario.name!r} reads real data sets: give --data-root DIR (the folder holding "
                        f"them) or --paths FILE (each site's files; docs/fsar-paper.md)")
    if args.data_root and not Path(args.data_root).is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    try:
        config = scenario_defaults(scenario)
    except ValueError as err:
        raise UserError(str(err)) from None
    overrides = {
        "num-server-rounds": args.rounds, "local-epochs": args.local_epochs, "personal-epochs": args.personal_epochs,
        "batch-size": args.batch_size,
        "learning-rate": args.lr, "lr-schedule": args.lr_schedule, "eval-every": args.eval_every, "model-preset": args.model_preset,
        "mu": args.mu, "grains": args.grains, "shared-blocks": args.shared_blocks,
        "frozen-blocks": args.frozen_blocks, "global-mix": args.global_mix,
        "share-head": args.share_head, "personal-norms": args.personal_norms, "group-heads": args.group_heads,
        "keep-optimizer-state": args.keep_optimizer_state,
        "head-start": args.head_start,
        "dp-epsilon": args.dp_epsilon, "dp-delta": args.dp_delta, "dp-max-grad-norm": args.dp_max_grad_norm,
        "dp-noise-multiplier": args.dp_noise_multiplier, "central-dp-noise": args.central_dp_noise,
        "central-dp-clip": args.central_dp_clip, "central-dp-clipping": args.central_dp_clipping, "secagg": args.secagg,
        "initial-model": str(Path(args.initial_model).resolve()) if args.initial_model else None,
        "anonymize": args.anonymize,
    }
    explicit = {k for k, v in overrides.items() if v is not None}
    config.update({k: v for k, v in overrides.items() if v is not None})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        config[key] = value
        explicit.add(key)
    config.update({
        "scenario": args.scenario, "strategy": strategy, "seed": args.seed, "device": args.device,
        "data-root": str(Path(args.data_root).resolve()) if args.data_root else "", "out-dir": str(out),
        "paths-file": str(Path(args.paths).resolve()) if args.paths else "",
    })
    if args.no_mkd:
        config["mkd"] = False
    if args.private_recipe:
        from simulations.private_recipe import apply_private_recipe

        config = apply_private_recipe(config, explicit, args.device)
    try:
        from privacy.coordinator import check_run_config

        switched_on = check_run_config(config)
        settings = RunSettings.from_run_config(config)
        from client.trainer import resolve_device

        resolve_device(settings.device)  # the simulated sites run here: a device this machine lacks fails now
        # a bad model fails before the engine starts
        from server.federation import check_group_heads, check_run_settings, model_config_for

        model = model_config_for(scenario, settings.model_preset, settings.extra.get("model-overrides"))
        check_run_settings(settings, model)
        check_group_heads(settings, switched_on)
        run_recipe = settings.augmentation()
        for site in scenario.sites:
            check_copies_augmented(run_recipe, site.recipe, f"site {site.name}")
        some_site_augments = any(recipe_augments({**run_recipe, **site.recipe}) for site in scenario.sites)
        # the recipe's copies are for whichever sites augment: inert where none does
        copies_from_recipe = args.private_recipe and "augment-multiplicity" not in explicit
        if settings.augment_multiplicity > 1 and not some_site_augments and not copies_from_recipe:
            raise UserError(f"run config: augment-multiplicity = {settings.augment_multiplicity} is for the sites "
                            f"that augment, and no site of scenario {scenario.name!r} does: set augment-rotate "
                            f"or augment-scale too")
        # client_policy refuses share-head / personal-norms where they mean nothing
        policy = client_policy(settings.strategy, scenario.shared_label_set, settings.share_head,
                               settings.personal_norms)
        from server.federation import with_run_anonymization

        with_run_anonymization(scenario, settings.extra.get("anonymize"))
        if settings.extra.get("initial-model"):  # a file unfit for the run fails here, not in round 1
            check_warm_start(scenario, settings, model, policy)
    except ValueError as err:
        raise UserError(str(err)) from None
    return settings


def check_warm_start(scenario: Scenario, settings: RunSettings, model: dict, policy: str) -> None:
    """Load the run's initial model as the server will (missing, unreadable, matching
    nothing, or leaving frozen blocks random: a WarmStartError)."""
    from server.federation import starting_arrays

    starting_arrays(scenario, settings, model, policy, str(settings.extra["initial-model"]))


def scenario_for_engine(args: argparse.Namespace, settings: RunSettings) -> Scenario:
    """The run's scenario with ``--site-cpus`` applied to every site."""
    scenario = resolve_scenario(settings.scenario, settings.paths_file or None)
    cpus = args.site_cpus
    if cpus is not None:
        if not cpus > 0:
            raise UserError(f"--site-cpus must be > 0, got {cpus}")
        for site in scenario.sites:
            site.num_cpus = float(cpus)
    return scenario


def run(args: argparse.Namespace) -> int:
    from simulations.engine import simulate

    out = Path(args.out)
    settings = settings_from_args(args, args.strategy, out)
    scenario = scenario_for_engine(args, settings)
    print(f"scenario {scenario.name}: {len(scenario.sites)} sites, strategy {settings.strategy}, "
          f"{counted(settings.num_server_rounds, 'round')} -> {out}/results.json", flush=True)
    try:
        results = simulate(scenario, settings)
    except ValueError as err:  # what the coordinator refuses when the run starts (a site's data folder, ...)
        raise UserError(str(err)) from None
    print()
    print(site_table(results))
    check_some_site_trained(results)
    return 0


def check_some_site_trained(results: dict) -> None:
    """A :class:`UserError` with the sites' own error when no site trained in any round
    because every reply was an error (not a decline): the run measured nothing. Likewise
    when some site failed in every round (its data could not be loaded, say): the table
    then covers only the others, and a mean over them is not the scenario's."""
    rounds = results.get("rounds") or []
    errors = [d for r in rounds for d in r.get("dropped", []) if "site reported an error" in d]
    if rounds and errors and not any(r.get("sites_ok") for r in rounds):
        raise UserError(f"no site trained in any round; the first site error: {error_line(errors[0])} "
                        f"(results.json lists them all)")
    failing = [{d.split(":", 1)[0] for d in r.get("dropped", []) if "site reported an error" in d} for r in rounds]
    always = set.intersection(*failing) if failing else set()
    if always:
        first = next(d for d in errors if d.split(":", 1)[0] in always)
        raise UserError(f"{counted(len(always), 'site')} failed in every round, so the table covers only the others; "
                        f"the first error: {error_line(first)} (results.json lists them all)")


def error_line(report: str) -> str:
    """The line of a site's error report that names the exception, e.g. ``ValueError: ...``."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): \S", line)]
    return named[-1] if named else (lines[-1] if lines else report)
