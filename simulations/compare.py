"""``fedsar-sim compare``: several strategies (and seeds, and privacy levels) on one
scenario, side by side.

Writes ``OUT/<strategy>-seed<k>/results.json`` per run (``<strategy>-eps<e>-seed<k>`` and
``<strategy>-nodp-seed<k>`` with ``--epsilons``), ``OUT/comparison.md`` (per-site and
mean top-1, mean and spread over seeds, uplink per round, simulation overhead; with
several seeds, each strategy's paired difference from the first one listed at the same
privacy level and, with ``--epsilons`` that include ``inf``, each private run's cost
against the same strategy without DP and the seeds within ``--privacy-goal`` points of
it; the epsilon each site spent),
``OUT/comparison.json`` and ``OUT/accuracy.png`` (mean site accuracy per round). A run
whose folder already holds a complete ``results.json`` with the same settings is read
back instead of run again, so an interrupted sweep picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.settings import RunSettings, describe_changes, settings_changes
from simulations.run import add_run_options, check_some_site_trained, scenario_for_engine, settings_from_args
from skeletons.atomic import write_json
from skeletons.clikit import UserError, counted
from strategies.registry import STRATEGY_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--strategies", default="fsar,fedavg,local", help=f"comma-separated from {','.join(STRATEGY_NAMES)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: --seed)")
    parser.add_argument("--epsilons", default=None,
                        help="comma-separated DP-SGD targets, inf for a run without DP (e.g. 1,3,8,inf); "
                             "each strategy runs at each, with --dp-delta and --dp-max-grad-norm")
    parser.add_argument("--privacy-goal", type=float, default=10.0, metavar="POINTS",
                        help="with --epsilons: count the seeds whose private run is within POINTS of "
                             "top-1 of the same strategy without DP (default 10)")
    parser.add_argument("--out", default="runs/compare",
                        help="folder of the runs and tables; a run already completed there with the same "
                             "settings is read back, not run again")


def run(args: argparse.Namespace) -> int:
    from simulations.engine import simulate

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGY_NAMES]
    if bad:
        raise UserError(f"--strategies: unknown {', '.join(bad)}; choose from {', '.join(STRATEGY_NAMES)}")
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    epsilons = parse_epsilons(args.epsilons) if args.epsilons else [None]
    if args.epsilons and (args.dp_epsilon is not None or args.dp_noise_multiplier is not None):
        raise UserError("--epsilons sets each run's DP-SGD target: leave out --dp-epsilon and --dp-noise-multiplier")
    if not args.privacy_goal > 0:
        raise UserError(f"--privacy-goal must be a positive number of points, not {args.privacy_goal:g}")
    out = Path(args.out)
    plan = []  # every run's settings first, so that a bad combination fails before hours of runs
    for strategy in strategies:
        for epsilon in epsilons:
            for seed in seeds:
                run_args = argparse.Namespace(**{**vars(args), "seed": seed})
                if epsilon is not None:
                    run_args.dp_epsilon = epsilon
                run_dir = out / f"{variant_folder(strategy, epsilon)}-seed{seed}"
                plan.append((variant_name(strategy, epsilon), run_args, run_dir,
                             strategy_settings(run_args, strategy, run_dir)))
    clashes = [(run_dir, other) for _, _, run_dir, settings in plan
               if (other := other_settings(run_dir, settings.to_run_config()))]
    if clashes:  # never replaced without a word: the folder would mix two comparisons
        run_dir, other = clashes[0]
        raise UserError(f"{run_dir} holds a completed run with other settings ({describe_changes(other, 4)})"
                        + (f", and {counted(len(clashes) - 1, 'more run')} like it" if len(clashes) > 1 else "")
                        + f": give another --out, or delete those folders to run them again")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, run_args, run_dir, settings in plan:
        done = finished_run(run_dir, settings.to_run_config())
        print(f"== {name}, seed {run_args.seed}" + (f" (read back from {run_dir})" if done else ""), flush=True)
        result = done or simulate(scenario_for_engine(run_args, settings), settings)
        check_some_site_trained(result)  # the next runs would fail alike
        runs.setdefault(name, []).append(result)
    summary = summarize_runs(runs)
    reference = {variant_name(s, e): variant_name(strategies[0], e) for s in strategies[1:] for e in epsilons}
    differences = paired_against(runs, reference)
    private = [e for e in epsilons if e not in (None, "inf")]
    costs = paired_against(runs, {variant_name(s, e): variant_name(s, "inf") for s in strategies for e in private}
                           if "inf" in epsilons else {})
    report: dict[str, Any] = dict(summary)
    if differences:
        report["paired_differences"] = differences
    if costs:
        count_within(costs, args.privacy_goal / 100)
        report["privacy_costs"] = costs
        report["privacy_goal_points"] = args.privacy_goal
    write_json(out / "comparison.json", report)
    table = comparison_table(summary)
    if differences:
        at_level = " at the same privacy level" if args.epsilons else ""
        table += "\n\n" + differences_table(differences, strategies[0] + at_level)
    if costs:
        table += "\n\n" + differences_table(costs, "the same strategy without DP", goal_points=args.privacy_goal)
    spent = privacy_table(runs)
    if spent:
        table += "\n\n" + spent
    (out / "comparison.md").write_text(table + "\n")
    plot_rounds(runs, out / "accuracy.png")
    print()
    print(table)
    print(f"\nwrote {out / 'comparison.md'}, {out / 'comparison.json'}, {out / 'accuracy.png'}")
    return 0


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers")
    return seeds


def parse_epsilons(text: str) -> list[str]:
    """``--epsilons`` as the text each run's ``dp-epsilon`` gets: positive numbers, and
    ``inf`` for the run without DP (where DP-SGD, and with it clipping, is off). Each
    level is read and checked as the sites read ``dp-epsilon``."""
    from privacy.dp import DPSettings, parse_dp_keys

    out: list[str] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            epsilon = parse_dp_keys({"dp-epsilon": item}, "--epsilons")["epsilon"]
        except ValueError as err:  # names --epsilons itself
            raise UserError(str(err)) from None
        try:
            DPSettings(epsilon=epsilon)
        except ValueError as err:
            raise UserError(f"--epsilons: {err}") from None
        out.append("inf" if epsilon is None else f"{epsilon:g}")
    if len(set(out)) != len(out):
        raise UserError(f"--epsilons {text!r} names a level twice")
    return out


def variant_name(strategy: str, epsilon: str | None) -> str:
    """How a strategy at one privacy level is named in the tables."""
    if epsilon is None:
        return strategy
    return f"{strategy}, no DP" if epsilon == "inf" else f"{strategy}, epsilon {epsilon}"


def variant_folder(strategy: str, epsilon: str | None) -> str:
    if epsilon is None:
        return strategy
    return f"{strategy}-nodp" if epsilon == "inf" else f"{strategy}-eps{epsilon}"


def finished_run(run_dir: Path, run_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results of a run already completed in ``run_dir`` with these settings, or None
    (no results, an unfinished or unreadable file, or other settings: run it again)."""
    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = results.get("settings") == json.loads(json.dumps(dict(run_config)))
    return results if results.get("complete") and same else None


def other_settings(run_dir: Path, run_config: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (then, now)}`` when ``run_dir`` holds a completed run made with settings
    other than ``run_config`` (where it writes its output aside); empty otherwise."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    then = results.get("settings")
    if not results.get("complete") or not isinstance(then, dict):
        return {}
    return settings_changes(then, run_config, {"out-dir"})


def strategy_settings(args: argparse.Namespace, strategy: str, run_dir: Path) -> RunSettings:
    """One compared run's settings: ``--share-head`` and ``--personal-norms`` are fsar's
    options, the other strategies decide about their head and norms by themselves."""
    fsar_only = {key: getattr(args, key) if strategy == "fsar" else None for key in ("share_head", "personal_norms")}
    return settings_from_args(argparse.Namespace(**{**vars(args), **fsar_only}), strategy, run_dir)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarize_runs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per strategy: each site's and the mean final top-1 over seeds, uplink, overhead."""
    out: dict[str, Any] = {}
    for strategy, results in runs.items():
        sites: dict[str, list[float]] = {}
        trained_sites: dict[str, list[float]] = {}
        for res in results:
            for name, site in res["sites"].items():
                if site["final_accuracy"] is not None:
                    sites.setdefault(name, []).append(site["final_accuracy"])
                if site.get("trained_accuracy") is not None:
                    trained_sites.setdefault(name, []).append(site["trained_accuracy"])
        trained = [r["final"].get("mean_trained_accuracy") for r in results]
        rounds = [r for res in results for r in res["rounds"]]
        overhead = [r["final"]["overhead_ratio"] for r in results if r["final"].get("overhead_ratio")]
        out[strategy] = {
            "mean_accuracy": _mean_std([r["final"]["mean_accuracy"] for r in results if r["final"]["mean_accuracy"] is not None]),
            "sites": {name: _mean_std(v) for name, v in sites.items()},
            "mean_trained_accuracy": _mean_std([t for t in trained if t is not None]) if any(t is not None for t in trained) else None,
            "trained_sites": {name: _mean_std(v) for name, v in trained_sites.items()},
            "uplink_bytes_per_round": statistics.fmean(r["uplink_bytes"] for r in rounds) if rounds else 0.0,
            "overhead_ratio": statistics.fmean(overhead) if overhead else None,
            "seeds": [r["settings"]["seed"] for r in results],
            "scenario": results[0]["scenario"],
        }
    return out


def comparison_table(summary: dict[str, Any]) -> str:
    """Two blocks of rows per table: the sites' models as evaluated after the last
    aggregation (global + personal), then right after their last local training."""
    sites = sorted({name for s in summary.values() for name in s["sites"]})
    head = "| strategy | evaluated | " + " | ".join(sites) + " | mean | uplink/round | overhead |"
    lines = [head, "|" + "---|" * (len(sites) + 5)]
    views = (("global + personal", "sites", "mean_accuracy"), ("after local training", "trained_sites", "mean_trained_accuracy"))
    for label, sites_key, mean_key in views:
        for strategy, s in summary.items():
            if not s.get(mean_key):
                continue
            cells = [_fmt(s[sites_key].get(n)) for n in sites]
            ratio = s["overhead_ratio"]
            lines.append(
                f"| {strategy} | {label} | " + " | ".join(cells) + f" | **{_fmt(s[mean_key])}** | "
                f"{s['uplink_bytes_per_round'] / 1e6:.2f} MB | {'n/a' if ratio is None else f'{ratio:.2f}'} |"
            )
    return "\n".join(lines)


EVALUATIONS = (("global + personal", "mean_accuracy"), ("after local training", "mean_trained_accuracy"))


def paired_against(runs: dict[str, list[dict[str, Any]]], references: Mapping[str, str]) -> dict[str, Any]:
    """Each run name of ``references`` minus its reference in mean site top-1, seed by
    seed, for both evaluations. A seed fixes the data splits and initial models for every
    strategy, so pairing by seed takes the spread between seeds out of the comparison. Per
    pair: the differences, their mean, a 95% t-interval (two or more seeds) and the seeds
    ahead. Empty when no pair shares two seeds."""
    from scipy import stats

    def by_seed(results: list[dict[str, Any]], key: str) -> dict[int, float]:
        return {int(r["settings"]["seed"]): r["final"][key] for r in results if r["final"].get(key) is not None}

    out: dict[str, Any] = {}
    for strategy, reference in references.items():
        if strategy not in runs or reference not in runs:
            continue
        for label, key in EVALUATIONS:
            mine, theirs = by_seed(runs[strategy], key), by_seed(runs[reference], key)
            seeds = sorted(set(mine) & set(theirs))
            if len(seeds) < 2:
                continue
            diffs = [mine[k] - theirs[k] for k in seeds]
            mean = statistics.fmean(diffs)
            half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
            out.setdefault(strategy, {})[label] = {
                "seeds": seeds, "differences": diffs, "mean": mean, "ci95": [mean - half, mean + half],
                "ahead": sum(d > 0 for d in diffs),
            }
    return out


def count_within(costs: dict[str, Any], goal: float) -> None:
    """Add to each pair of :func:`paired_against` the seeds whose cost is at most ``goal``
    (a fraction of top-1) and whether the whole 95% interval is: the privacy target is
    stated as "within so many points of the run without DP"."""
    for views in costs.values():
        for d in views.values():
            d["within_goal"] = sum(x >= -goal - 1e-9 for x in d["differences"])  # 1e-9: float rounding
            d["interval_within_goal"] = d["ci95"][0] >= -goal - 1e-9


def differences_table(differences: dict[str, Any], reference: str, goal_points: float | None = None) -> str:
    """Markdown rows of :func:`paired_against`, in points of mean site top-1; with
    ``goal_points`` (pairs that went through :func:`count_within`), the seeds within it."""
    goal = f" within {goal_points:g} points in |" if goal_points is not None else ""
    lines = [f"| strategy minus {reference} | evaluated | per seed | mean | 95% interval | ahead in |{goal}",
             "|---|---|---|---:|---|---:|" + ("---:|" if goal else "")]
    for strategy, views in differences.items():
        for label, d in views.items():
            per_seed = ", ".join(f"{100 * x:+.1f}" for x in d["differences"])
            low, high = d["ci95"]
            row = (f"| {strategy} | {label} | {per_seed} | **{100 * d['mean']:+.1f}** | "
                   f"{100 * low:+.1f} to {100 * high:+.1f} | {d['ahead']} of {len(d['seeds'])} |")
            if goal:
                row += f" {d['within_goal']} of {len(d['seeds'])} |"
            lines.append(row)
    return "\n".join(lines)


def privacy_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown rows of the epsilon each site ended at and the rounds it declined, for the
    runs with DP-SGD; empty when none had it."""
    lines = ["| run | epsilon spent by a site (lowest to highest) | rounds declined |", "|---|---:|---:|"]
    for name, results in runs.items():
        sites = [site for r in results for site in ((r.get("privacy") or {}).get("sites") or {}).values()]
        spent = [float(site["epsilon"]) for site in sites if site.get("dp") and site.get("epsilon") is not None]
        if spent:
            declined = sum(int(site.get("declined_rounds") or 0) for site in sites)
            lines.append(f"| {name} | {min(spent):.3f} to {max(spent):.3f} | {declined} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _fmt(stat: dict[str, float] | None) -> str:
    if not stat:
        return "n/a"
    if stat["n"] > 1:
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
    return f"{100 * stat['mean']:.1f}"


def plot_rounds(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Mean site accuracy per round (solid) and each site's (thin), one panel per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.5), squeeze=False, sharey=True)
    for ax, (strategy, results) in zip(axes[0], runs.items()):
        res = results[0]
        evaluated = [r for r in res["rounds"] if r["mean_accuracy"] is not None]
        for site in res["sites"]:
            ax.plot([r["round"] for r in evaluated], [r["site_accuracy"].get(site) for r in evaluated], lw=0.8, alpha=0.7, label=site)
        ax.plot([r["round"] for r in evaluated], [r["mean_accuracy"] for r in evaluated], "k-", lw=2, label="mean")
        ax.set_title(f"{strategy} (seed {res['settings']['seed']})")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("site top-1")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
