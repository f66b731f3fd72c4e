"""``fedsar-privacy budget``: show a site's privacy ledger, or check that budget is left.

``--site site.toml`` finds the ledger where the site keeps it (``[privacy] ledger`` or
``<state_dir>/privacy-ledger.json``); ``--ledger PATH`` reads a ledger file directly.
``--check`` exits with status 1 when the budget is spent or the next round of the current
run would exceed it, so scripts can tell whether a site can still take part (a run that
has had all its rounds has no next round; a new run plans afresh over what is left, and
``--check`` fails when one as long as the last would need more noise than the site's
``max_noise_multiplier`` allows), and
with status 0 for a site that has no ledger yet (it has its whole budget).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--site", metavar="SITE_TOML", help="the site's configuration file")
    where.add_argument("--ledger", metavar="PATH", help="a privacy ledger file (JSON)")
    parser.add_argument("--delta", type=float, default=None, help="report epsilon at this delta (default: the ledger's)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the budget is spent, the current run's next round would exceed it, or "
                             "(the run finished) a new run as long would need more noise than max_noise_multiplier")


def _ledger_path(args: argparse.Namespace) -> tuple[Path, float | None, float | None]:
    """The ledger's path and, with ``--site``, the site's budget (its target epsilon) and
    its bound on the noise multiplier."""
    if args.ledger:
        return Path(args.ledger), None, None
    from client.site_config import SiteConfigError, load_site_config

    try:
        site = load_site_config(args.site)
    except SiteConfigError as err:
        raise UserError(str(err)) from None
    return site.ledger_path, site.privacy.epsilon, site.privacy.max_noise_multiplier


def summarize(ledger: Any, delta: float | None = None, target: float | None = None,
              max_noise: float | None = None) -> dict[str, Any]:
    """The figures ``budget`` prints: spent, target, remaining, the plan and the next round.

    ``delta`` only changes the delta at which ``epsilon`` (spent) is shown: the budget is
    an epsilon at the ledger's own delta, so what remains of it, and whether the next
    round fits, are always taken there."""
    delta = ledger.delta if delta is None else delta
    target = ledger.target_epsilon if target is None else target
    spent = ledger.epsilon(delta)
    spent_at_budget_delta = spent if delta == ledger.delta else ledger.epsilon()
    plan = ledger.plan or {}
    next_round = None
    finished = bool(plan) and _run_finished(ledger, plan)
    if plan and not finished:
        after = ledger.epsilon_after(plan["noise_multiplier"], plan["sample_rate"], plan["steps_per_round"])
        next_round = {"epsilon_after": after, "within_budget": target is None or after <= target * (1 + 1e-9)}
    return {
        "ledger": ledger.where, "site": ledger.site, "accountant": ledger.mechanism, "delta": delta,
        "epsilon": spent, "target_epsilon": target, "budget_delta": ledger.delta,
        "remaining": None if target is None else max(0.0, target - spent_at_budget_delta),
        "steps": ledger.steps, "rounds": len(ledger.rounds), "declined": len(ledger.declined),
        "plan": plan or None, "run_finished": finished, "next_round": next_round,
        "new_run": _new_run(ledger, plan, target, max_noise) if finished else None, "updated": ledger.updated,
    }


def _new_run(ledger: Any, plan: dict[str, Any], target: float | None, max_noise: float | None) -> dict[str, Any] | None:
    """What a new run as long as the finished one would need: the noise multiplier that
    spreads the budget left over its steps, and whether the site's ``max_noise_multiplier``
    would make it decline every round of it."""
    from privacy.dp import BudgetExhausted, noise_for_budget

    if target is None or not {"rounds", "steps_per_round", "sample_rate"} <= set(plan):
        return None
    rounds = int(plan["rounds"])
    try:
        z = noise_for_budget(ledger.history, ledger.mechanism, target, ledger.delta, float(plan["sample_rate"]),
                             rounds * int(plan["steps_per_round"]))
    except BudgetExhausted:
        return {"rounds": rounds, "noise_multiplier": None, "declined": True}
    return {"rounds": rounds, "noise_multiplier": z, "declined": max_noise is not None and z > max_noise,
            "max_noise_multiplier": max_noise}


def _untouched(path: Path, target: float | None, as_json: bool) -> int:
    """What ``budget --site`` says before the site's first DP-SGD round: nothing spent.
    With ``--check`` too the answer is 0: such a site can take part."""
    if as_json:
        print(json.dumps({"ledger": str(path), "exists": False, "epsilon": 0.0, "target_epsilon": target,
                          "remaining": target, "steps": 0, "rounds": 0}, indent=2))
    else:
        budget = f"its budget, epsilon {target:g}, is untouched" if target is not None else "no budget set"
        print(f"no privacy ledger at {path} yet: the site has not trained with DP-SGD; {budget}")
    return 0


def _run_finished(ledger: Any, plan: dict[str, Any]) -> bool:
    """Whether the planned run has had all its rounds here (trained or declined): then
    there is no next round of it to show, only what a new run would have left."""
    if "rounds" not in plan:
        return False
    run = str(plan.get("run"))
    seen = [int(r["round"]) for r in [*ledger.rounds, *ledger.declined] if str(r.get("run")) == run]
    return max(seen, default=0) >= int(plan["rounds"])


def format_summary(summary: dict[str, Any], ledger: Any) -> str:
    lines = [f"privacy ledger {summary['ledger']}" + (f" (site {summary['site']})" if summary["site"] else "")]
    lines.append(f"  accountant {summary['accountant']}, delta {summary['delta']:g}")
    lines.append(f"  spent      epsilon {summary['epsilon']:.4f} over {summary['steps']} DP-SGD steps "
                 f"in {summary['rounds']} rounds")
    if summary["target_epsilon"] is not None:
        at = "" if summary["delta"] == summary["budget_delta"] else f" at delta {summary['budget_delta']:g}"
        lines.append(f"  budget     epsilon {summary['target_epsilon']:g}{at}, remaining {summary['remaining']:.4f}")
    else:
        lines.append("  budget     none set (fixed noise multiplier)")
    plan = summary["plan"]
    if plan:
        lines.append(f"  plan       run {plan['run']}: noise multiplier {plan['noise_multiplier']:.4f}, sample rate "
                     f"{plan['sample_rate']:.4g}, {plan['steps_per_round']} steps per round")
        nxt = summary["next_round"]
        if nxt is None:
            lines.append(f"  run {plan['run']} has had all its {plan['rounds']} rounds")
        else:
            verdict = ("within budget" if nxt["within_budget"] else
                       f"would exceed the budget: the site declines the rest of run {plan['run']}")
            lines.append(f"  next round epsilon {nxt['epsilon_after']:.4f} ({verdict})")
        if (nxt is None or not nxt["within_budget"]) and summary["remaining"]:
            lines.append(f"  a new run  spreads the {summary['remaining']:.4g} left over its rounds, with as much "
                         "noise as that takes (the site's dp-max-noise-multiplier, when set, bounds it)")
        new = summary.get("new_run")
        if new and new["noise_multiplier"] is not None:
            verdict = (f"above max_noise_multiplier {new['max_noise_multiplier']:g}: the site would decline it"
                       if new["declined"] else "and the site would train it")
            lines.append(f"             one of {new['rounds']} rounds like run {plan['run']} needs noise multiplier "
                         f"{new['noise_multiplier']:.4g}, {verdict}")
    if ledger.rounds:
        lines.append("")
        lines.append(f"  {'run':<12} {'round':>5} {'steps':>6} {'noise':>8} {'q':>8} {'epsilon':>9}  status")
        for r in ledger.rounds[-20:]:
            lines.append(f"  {str(r['run'])[:12]:<12} {r['round']:>5} {r['steps']:>6} {r['noise_multiplier']:>8.4f} "
                         f"{r['sample_rate']:>8.4g} {r['epsilon']:>9.4f}  {r['status']}")
        if len(ledger.rounds) > 20:
            lines.append(f"  ... {len(ledger.rounds) - 20} earlier rounds not shown")
    for r in ledger.releases:
        lines.append(f"  released   {r['what']} in run {r['run']} round {r['round']}: {r['releases']} Gaussian "
                     f"releases, noise {r['noise_multiplier']:.4g}, clip {r['clip']:g} (epsilon then {r['epsilon']:.4f})")
    for d in ledger.declined[-5:]:
        lines.append(f"  declined run {d['run']} round {d['round']}: {d['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from privacy.ledger import LedgerError, read_ledger

    path, site_target, site_max_noise = _ledger_path(args)
    if args.delta is not None and not 0 < args.delta < 1:
        raise UserError(f"--delta {args.delta} must be in (0, 1)")
    if args.site and not path.exists():  # a site that has not trained with DP-SGD yet: its whole budget is left
        return _untouched(path, site_target, args.json)
    try:
        ledger = read_ledger(path)
    except LedgerError as err:
        hint = " (the site has not trained with DP-SGD yet)" if not path.exists() else ""
        raise UserError(f"{err}{hint}") from None
    summary = summarize(ledger, args.delta, site_target, site_max_noise)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, ledger))
    if args.check:
        exhausted = (summary["remaining"] is not None and summary["remaining"] <= 0) or (
            summary["next_round"] is not None and not summary["next_round"]["within_budget"]) or (
            summary["new_run"] is not None and summary["new_run"]["declined"])
        return 1 if exhausted else 0
    return 0
