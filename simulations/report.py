"""Human-readable output of simulation results: progress lines and tables."""

from __future__ import annotations

from typing import Any

from strategies.screening import RoundRecord


def progress_line(record: RoundRecord, num_rounds: int) -> str:
    accs = [m["eval-accuracy"] for m in record.evaluate.values() if "eval-accuracy" in m]
    acc = f"mean site acc {100 * sum(accs) / len(accs):5.1f}%" if accs else "(no evaluation)     "
    dropped = f"  dropped {len(record.dropped)}" if record.dropped else ""
    return (
        f"round {record.round:>3}/{num_rounds}  {acc}  wall {record.wall_s:6.1f}s  "
        f"compute {record.compute_s:6.1f}s  uplink {record.uplink_bytes / 1e6:6.2f} MB{dropped}"
    )


def site_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per site with its final accuracy, then the mean."""
    lines = ["| site | final top-1 |", "|---|---:|"]
    for name, site in results["sites"].items():
        acc = site.get("final_accuracy")
        lines.append(f"| {name} | {_pct(acc)} |")
    lines.append(f"| **mean** | **{_pct(results['final']['mean_accuracy'])}** |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
