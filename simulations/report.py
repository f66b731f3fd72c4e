"""Human-readable output of simulation results: progress lines and tables."""

from __future__ import annotations

from typing import Any

from strategies.screening import RoundRecord


def progress_line(record: RoundRecord, num_rounds: int) -> str:
    accs = [m["eval-accuracy"] for m in record.evaluate.values() if "eval-accuracy" in m]
    acc = f"mean site acc {100 * sum(accs) / len(accs):5.1f}%" if accs else "(no evaluation)     "
    trained = [m["trained-accuracy"] for m in record.train.values() if "trained-accuracy" in m]
    if trained:
        acc += f" (after local training {100 * sum(trained) / len(trained):5.1f}%)"
    dropped = f"  dropped {len(record.dropped)}" if record.dropped else ""
    return (
        f"round {record.round:>3}/{num_rounds}  {acc}  wall {record.wall_s:6.1f}s  "
        f"compute {record.compute_s:6.1f}s  uplink {record.uplink_bytes / 1e6:6.2f} MB{dropped}"
    )


def site_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per site, then the mean.

    "global + personal" is the new global model with the site's personal parameters
    (after the last aggregation); "after local training" is the site's own model at the
    end of its last local training, before averaging.
    """
    lines = ["| site | final top-1 (global + personal) | after local training |", "|---|---:|---:|"]
    for name, site in results["sites"].items():
        lines.append(f"| {name} | {_pct(site.get('final_accuracy'))} | {_pct(site.get('trained_accuracy'))} |")
    final = results["final"]
    lines.append(f"| **mean** | **{_pct(final['mean_accuracy'])}** | **{_pct(final.get('mean_trained_accuracy'))}** |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
