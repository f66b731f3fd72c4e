"""Prometheus metrics of the coordinator.

The ServerApp writes ``status.json`` after every round; the coordinator daemon serves
metrics computed from it on each scrape, plus what only the daemon knows (whether the
SuperLink runs, which enrolled sites are connected). Nothing is lost when the ServerApp
process ends or the daemon restarts, because the numbers come from the files.

``record_privacy_spent(site, epsilon)`` sets the privacy gauge of a site; the DP code
calls it in whichever coordinator process learns the value, and the value reaches the
daemon through ``privacy-spent.json`` in the state folder.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from server.status import read_status
from skeletons.atomic import write_json

STATE_ENV = "FEDSAR_COORDINATOR_STATE"  # set by fedsar-server for the processes it starts
PRIVACY_FILE = "privacy-spent.json"

REGISTRY = CollectorRegistry(auto_describe=True)
PRIVACY_SPENT = Gauge(
    "fedsar_privacy_epsilon_spent", "Differential-privacy epsilon each site has spent so far",
    ["site"], registry=REGISTRY,
)


def record_privacy_spent(site: str, epsilon: float) -> None:
    """Set the privacy-spent gauge of ``site`` here and for the coordinator daemon."""
    PRIVACY_SPENT.labels(site=site).set(float(epsilon))
    state = os.environ.get(STATE_ENV)
    if not state:
        return
    path = Path(state) / PRIVACY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(PRIVACY_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            spent = _read_json(path)
            spent[site] = float(epsilon)
            write_json(path, spent)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


class CoordinatorCollector:
    """Metrics from the status file, the privacy file and the daemon's view of the sites."""

    def __init__(self, state_dir: str | Path, status_file: str | Path, daemon_view: Callable[[], dict[str, Any]]) -> None:
        self.state_dir = Path(state_dir)
        self.status_file = Path(status_file)
        self.daemon_view = daemon_view

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        view = self.daemon_view()
        doc = read_status(self.status_file) or {}
        out: list[Any] = []

        def gauge(name: str, text: str, value: float | None) -> None:
            if value is not None:
                out.append(GaugeMetricFamily(name, text, value=float(value)))

        def counter(name: str, text: str, value: float | None) -> None:
            if value is not None:
                out.append(CounterMetricFamily(name, text, value=float(value)))

        def per_site(name: str, text: str, values: dict[str, float]) -> None:
            if values:
                family = GaugeMetricFamily(name, text, labels=["site"])
                for site, value in sorted(values.items()):
                    family.add_metric([site], float(value))
                out.append(family)

        gauge("fedsar_coordinator_up", "1 while the SuperLink process runs", view.get("up", 0.0))
        gauge("fedsar_sites_enrolled", "Sites whose keys are registered", view.get("enrolled"))
        gauge("fedsar_sites_connected", "Enrolled sites whose SuperNode is online", view.get("connected"))
        gauge("fedsar_rounds_planned", "Rounds the run is configured for", doc.get("num_rounds"))
        counter("fedsar_rounds_completed", "Rounds completed (checkpointed)", doc.get("rounds_completed", 0))
        rounds = doc.get("rounds", [])
        if rounds:
            out.append(SummaryMetricFamily(
                "fedsar_round_duration_seconds", "Wall time of the rounds of this run",
                count_value=len(rounds), sum_value=float(sum(r["wall_s"] for r in rounds)),
            ))
        last = doc.get("last_round") or {}
        gauge("fedsar_last_round_duration_seconds", "Wall time of the last round", last.get("wall_s"))
        gauge("fedsar_sites_participating", "Sites whose update was aggregated in the last round", last.get("sites_ok"))
        gauge("fedsar_sites_failed", "Sites that failed or were dropped in the last round", last.get("sites_failed"))
        totals = doc.get("totals", {})
        counter("fedsar_failed_replies", "Site replies that failed or were dropped, all rounds", totals.get("sites_failed"))
        counter("fedsar_replies_dropped", "Replies rejected by screening, all rounds", totals.get("dropped"))
        counter("fedsar_bytes_received", "Parameter bytes received from sites", totals.get("uplink_bytes"))
        counter("fedsar_bytes_sent", "Parameter bytes sent to sites", totals.get("downlink_bytes"))
        gauge("fedsar_mean_accuracy", "Mean test accuracy of the sites' models, last evaluation", last.get("mean_accuracy"))
        gauge("fedsar_mean_trained_accuracy",
              "Mean test accuracy of the sites' models right after local training, last round",
              last.get("mean_trained_accuracy"))
        train = last.get("train", {})
        evaluate = last.get("evaluate", {})
        per_site("fedsar_round_site_train_loss", "Training loss each site reported in the last round",
                 {s: m["train-loss"] for s, m in train.items() if "train-loss" in m})
        per_site("fedsar_round_site_trained_accuracy",
                 "Test accuracy of each site's model right after its local training, last round",
                 {s: m["trained-accuracy"] for s, m in train.items() if "trained-accuracy" in m})
        per_site("fedsar_round_site_accuracy", "Test accuracy each site reported in the last evaluation",
                 {s: m["eval-accuracy"] for s, m in evaluate.items() if "eval-accuracy" in m})
        per_site("fedsar_round_site_eval_loss", "Test loss each site reported in the last evaluation",
                 {s: m["eval-loss"] for s, m in evaluate.items() if "eval-loss" in m})
        privacy = dict(doc.get("privacy_epsilon", {}))
        privacy.update(_read_json(self.state_dir / PRIVACY_FILE))
        per_site("fedsar_privacy_epsilon_spent", "Differential-privacy epsilon each site has spent so far", privacy)
        per_site("fedsar_enrolled_site_online", "1 when the enrolled site's SuperNode is online", view.get("sites", {}))
        return out


def serve_coordinator_metrics(
    port: int, host: str, state_dir: str | Path, status_file: str | Path, daemon_view: Callable[[], dict[str, Any]]
) -> CollectorRegistry:
    """Expose the coordinator's metrics on ``host:port``; returns the registry."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(state_dir, status_file, daemon_view))
    start_http_server(port, addr=host, registry=registry)
    return registry
