"""Human-readable output of simulation results: the per-site table (the per-round line is
``RoundRecord.progress_line``)."""

from __future__ import annotations

from typing import Any

from skeletons.clikit import counted


def site_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per site, then the mean; under DP-SGD each site's epsilon
    spent (and rounds declined), and under central DP a line with its epsilon.

    "global + personal" is the new global model with the site's personal parameters
    (after the last aggregation); "after local training" is the site's own model at the
    end of its last local training, before averaging.
    """
    privacy = results.get("privacy") or {}
    spent = privacy.get("sites") or {}
    private = any(entry.get("dp") for entry in spent.values())
    header, rule = "| site | final top-1 (global + personal) | after local training |", "|---|---:|---:|"
    if private:
        header, rule = header + " epsilon spent |", rule + "---:|"
    lines = [header, rule]
    for name, site in results["sites"].items():
        row = f"| {name} | {_pct(site.get('final_accuracy'))} | {_pct(site.get('trained_accuracy'))} |"
        lines.append(row + (f" {_epsilon(spent.get(name))} |" if private else ""))
    final = results["final"]
    mean = f"| **mean** | **{_pct(final['mean_accuracy'])}** | **{_pct(final.get('mean_trained_accuracy'))}** |"
    lines.append(mean + (" |" if private else ""))
    central = privacy.get("central_dp")
    if central:
        lines.append("")
        lines.append(f"central DP: epsilon {central['epsilon']:.2f} at delta {central['delta']:g} after "
                     f"{counted(len(central['releases']), 'release')}")  # privacy.central's report
    return "\n".join(lines)


def _epsilon(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"  # the site never replied
    if not entry.get("dp"):
        return "no DP"
    declined = int(entry.get("declined_rounds", 0))
    note = f" ({counted(declined, 'round')} declined)" if declined else ""
    return f"{entry['epsilon']:.2f}{note}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
