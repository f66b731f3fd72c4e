"""The coordinator's status file: what the run has done so far, in one small JSON.

The ServerApp writes it after every round (atomically); ``fedsar-server status`` and
the Prometheus exporter of the coordinator daemon read it. A file is the bridge
because the ServerApp runs in its own process, started by the SuperLink, while the
daemon and the status command live elsewhere and must work even when the run is over
or has crashed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Iterable

from skeletons.atomic import write_json


def mean_accuracy(evaluate: dict[str, dict[str, float]], key: str = "eval-accuracy") -> float | None:
    """Mean of ``key`` over the sites that reported it."""
    accs = [m[key] for m in evaluate.values() if key in m]
    return statistics.fmean(accs) if accs else None


def mean_trained_accuracy(train: dict[str, dict[str, float]]) -> float | None:
    """Mean test accuracy of the sites' models right after local training, before
    averaging (``trained-accuracy`` in the train replies; absent when sites skip it)."""
    return mean_accuracy(train, "trained-accuracy")


def privacy_from_history(history: Iterable[Any]) -> dict[str, float]:
    """Latest epsilon each site that trains with DP-SGD reported, in a reply it trained or
    declined with (:func:`privacy.coordinator.site_epsilons`)."""
    from privacy.coordinator import site_epsilons

    return {site: entry["epsilon"] for site, entry in site_epsilons(history).items() if entry["dp"]}


def round_summary(record: Any) -> dict[str, Any]:
    return {
        "round": record.round,
        "wall_s": record.wall_s,
        "compute_s": record.compute_s,
        "sites_asked": record.sites_asked,
        "sites_ok": record.sites_ok,
        "sites_failed": record.sites_failed,
        "dropped": list(record.dropped),
        "uplink_bytes": record.uplink_bytes,
        "downlink_bytes": record.downlink_bytes,
        "mean_accuracy": mean_accuracy(record.evaluate),
        "mean_trained_accuracy": mean_trained_accuracy(record.train),
        "train": record.train,
        "evaluate": record.evaluate,
    }


def build_status(
    state: str,
    settings: Any,
    history: list[Any],
    first_round: int,
    started: float,
    error: str | None = None,
) -> dict[str, Any]:
    """The status document for the run described by ``settings`` and ``history``."""
    rounds = [
        {k: v for k, v in round_summary(r).items() if k not in ("train", "evaluate")}
        for r in history
    ]
    return {
        "state": state,
        "federation": str(settings.extra.get("federation", "")),
        "scenario": settings.scenario,
        "strategy": settings.strategy,
        "num_rounds": settings.num_server_rounds,
        "rounds_completed": history[-1].round if history else first_round - 1,
        "first_round": first_round,
        "resumed": first_round > 1,
        "started_at": started,
        "updated_at": time.time(),
        "error": error,
        "last_round": round_summary(history[-1]) if history else None,
        "totals": {
            "uplink_bytes": int(sum(r.uplink_bytes for r in history)),
            "downlink_bytes": int(sum(r.downlink_bytes for r in history)),
            "sites_failed": int(sum(r.sites_failed for r in history)),
            "dropped": int(sum(len(r.dropped) for r in history)),
            "round_seconds": float(sum(r.wall_s for r in history)),
        },
        "rounds": rounds,
        "privacy_epsilon": privacy_from_history(history),
    }


def write_status(path: str | Path, doc: dict[str, Any]) -> None:
    write_json(path, doc)


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The status document, or None when no run has written one yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_status(doc: dict[str, Any] | None, daemon: dict[str, Any] | None, nodes: list[dict[str, Any]] | None) -> str:
    """Human-readable status for ``fedsar-server status``."""
    lines = []
    alive = bool(daemon and daemon.get("alive"))
    if daemon:
        # a stopped coordinator's daemon file keeps the run status it last saw: not shown as current
        run_status = f" [{daemon['run_status']}]" if alive and daemon.get("run_status") else ""
        lines.append(f"coordinator: {'running' if alive else 'not running'} (pid {daemon.get('pid')}), "
                     f"SuperLink {daemon.get('address')}, run {daemon.get('run_id', '-')}{run_status}")
    else:
        lines.append("coordinator: never started with this state folder")
    if doc is None:
        lines.append("run: no round finished yet")
    else:
        resumed = f", resumed at round {doc['first_round']}" if doc.get("resumed") else ""
        state = doc["state"]
        if state == "running" and daemon is not None and not alive:
            state = "interrupted (the coordinator stopped; fedsar-server start --resume goes on)"
        lines.append(
            f"run: {state}, {doc['rounds_completed']}/{doc['num_rounds']} rounds, strategy {doc['strategy']}, "
            f"scenario {doc['scenario']}{resumed}"
        )
        if doc.get("error"):
            lines.append(f"error: {doc['error']}")
        last = doc.get("last_round")
        if last:
            lines.append(
                f"last round {last['round']}: {last['wall_s']:.1f}s, {last['sites_ok']} sites ok, {last['sites_failed']} failed or dropped, "
                f"mean accuracy {_pct(last['mean_accuracy'])} (after local training "
                f"{_pct(last.get('mean_trained_accuracy'))}), uplink {last['uplink_bytes'] / 1e6:.2f} MB"
            )
            for reason in last.get("dropped", []):
                lines.append(f"  dropped: {reason}")
            sites = sorted(set(last.get("train", {})) | set(last.get("evaluate", {})))
            if sites:
                lines.append(f"  {'site':<20} {'train loss':>10} {'accuracy':>9} {'trained':>8} {'epsilon':>8}")
                for site in sites:
                    loss = last.get("train", {}).get(site, {}).get("train-loss")
                    trained = last.get("train", {}).get(site, {}).get("trained-accuracy")
                    acc = last.get("evaluate", {}).get(site, {}).get("eval-accuracy")
                    eps = doc.get("privacy_epsilon", {}).get(site)
                    loss_s = "-" if loss is None else f"{loss:.4f}"
                    eps_s = "-" if eps is None else f"{eps:.2f}"
                    lines.append(f"  {site:<20} {loss_s:>10} {_pct(acc):>9} {_pct(trained):>8} {eps_s:>8}")
    if nodes is not None:
        online = [n for n in nodes if n["status"] == "online"]
        lines.append(f"sites: {len(online)} connected of {len(nodes)} enrolled")
        for n in nodes:
            lines.append(f"  {n['name']:<20} {n['status']:<12} node {n['node_id']}")
    return "\n".join(lines)
