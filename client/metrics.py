"""Prometheus metrics of a deployed site.

The ClientApp runs in short-lived task processes, so it cannot hold Prometheus
counters itself. After each message it adds what happened (round, loss, accuracy,
parameter bytes in and out, failures, privacy spent) to the site's ``metrics.json``
(atomically, under a file lock), and the long-lived ``fedsar-client`` daemon exposes
that file, together with its own process health, on its metrics port.

``record_privacy_spent(site, epsilon)`` is what the site's DP code calls once it knows
the epsilon spent so far; it works from any process of the site.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from skeletons.atomic import write_json

METRICS_ENV = "FEDSAR_SITE_METRICS"  # set by fedsar-client for the processes of its site

REGISTRY = CollectorRegistry(auto_describe=True)
PRIVACY_SPENT = Gauge(
    "fedsar_site_privacy_epsilon_spent", "Differential-privacy epsilon this site has spent so far",
    ["site"], registry=REGISTRY,
)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def update_metrics(path: str | Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write ``metrics.json`` under a lock, atomically."""
    path = Path(path)
    with _locked(path):
        doc = read_metrics(path)
        change(doc)
        doc["updated_at"] = time.time()
        write_json(path, doc)


def record_privacy_spent(site: str, epsilon: float) -> None:
    """Set the privacy-spent gauge of ``site`` (and the site's metrics file when deployed)."""
    PRIVACY_SPENT.labels(site=site).set(float(epsilon))
    path = os.environ.get(METRICS_ENV)
    if path:
        def change(doc: dict[str, Any]) -> None:
            doc.setdefault("privacy_epsilon", {})[site] = float(epsilon)

        update_metrics(path, change)


def _nbytes(record_dict: Any) -> int:
    return int(sum(len(a.data) for arrays in record_dict.array_records.values() for a in arrays.values()))


def record_exchange(context: Any, kind: str, received: Any, reply: Any) -> None:
    """Add one train or evaluate exchange to the deployed site's metrics file (no-op in simulation)."""
    path = context.node_config.get("site-config")
    if not path:
        return
    from client.site_config import load_site_config

    site = load_site_config(str(path))
    config = received.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 0)) if config else 0
    got = _nbytes(received.content)
    sent = 0 if reply.has_error() else _nbytes(reply.content)
    metrics: dict[str, float] = {}
    if not reply.has_error():
        for record in reply.content.metric_records.values():
            metrics.update({k: float(v) for k, v in record.items() if isinstance(v, (int, float))})

    run_id = int(received.metadata.run_id)

    def change(doc: dict[str, Any]) -> None:
        doc["site"] = site.name
        if doc.get("run_id") != run_id:  # a new run (or a resumed one) counts its own rounds
            doc["run_id"] = run_id
            doc["last_round"] = server_round
        else:
            doc["last_round"] = max(int(doc.get("last_round", 0)), server_round)
        doc["bytes_received"] = int(doc.get("bytes_received", 0)) + got
        doc["bytes_sent"] = int(doc.get("bytes_sent", 0)) + sent
        counts = doc.setdefault("messages", {})
        counts[kind] = int(counts.get(kind, 0)) + 1
        if reply.has_error():
            doc["failures"] = int(doc.get("failures", 0)) + 1
        else:
            doc[kind] = {"round": server_round, **metrics}
            for key in ("privacy-epsilon", "epsilon"):
                if key in metrics:
                    doc.setdefault("privacy_epsilon", {})[site.name] = metrics[key]

    update_metrics(site.metrics_file, change)


class SiteCollector:
    """Prometheus collector over the site's metrics file and its daemon's health."""

    def __init__(self, site: str, metrics_file: str | Path, health: Callable[[], dict[str, float]]) -> None:
        self.site = site
        self.metrics_file = Path(metrics_file)
        self.health = health

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        doc = read_metrics(self.metrics_file)
        labels = ["site"]

        def gauge(name: str, doc_text: str, value: float | None) -> GaugeMetricFamily | None:
            if value is None:
                return None
            g = GaugeMetricFamily(name, doc_text, labels=labels)
            g.add_metric([self.site], float(value))
            return g

        def counter(name: str, doc_text: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc_text, labels=labels)
            c.add_metric([self.site], float(value))
            return c

        train, evaluate = doc.get("train", {}), doc.get("evaluate", {})
        health = self.health()
        families = [
            gauge("fedsar_site_up", "1 while the site's SuperNode process runs", health.get("up", 0.0)),
            counter("fedsar_site_supernode_restarts", "Times the daemon restarted the site's SuperNode", health.get("restarts", 0.0)),
            gauge("fedsar_site_last_round", "Last server round this site took part in", doc.get("last_round")),
            counter("fedsar_site_train_messages", "Train messages handled", doc.get("messages", {}).get("train", 0)),
            counter("fedsar_site_evaluate_messages", "Evaluate messages handled", doc.get("messages", {}).get("evaluate", 0)),
            counter("fedsar_site_failures", "Messages the ClientApp failed to handle", doc.get("failures", 0)),
            counter("fedsar_site_bytes_received", "Parameter bytes received from the coordinator", doc.get("bytes_received", 0)),
            counter("fedsar_site_bytes_sent", "Parameter bytes sent to the coordinator", doc.get("bytes_sent", 0)),
            gauge("fedsar_site_train_loss", "Local training loss in the last round", train.get("train-loss")),
            gauge("fedsar_site_train_accuracy", "Local training accuracy in the last round", train.get("train-accuracy")),
            gauge("fedsar_site_train_seconds", "Local training time in the last round", train.get("train-seconds")),
            gauge("fedsar_site_eval_loss", "Test loss of the personalized model", evaluate.get("eval-loss")),
            gauge("fedsar_site_eval_accuracy", "Test accuracy of the personalized model", evaluate.get("eval-accuracy")),
            gauge("fedsar_site_privacy_epsilon_spent", "Differential-privacy epsilon this site has spent so far",
                  doc.get("privacy_epsilon", {}).get(self.site)),
        ]
        return [f for f in families if f is not None]


def serve_site_metrics(port: int, site: str, metrics_file: str | Path, health: Callable[[], dict[str, float]]) -> CollectorRegistry:
    """Expose the site's metrics on ``port`` (all interfaces); returns the registry."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SiteCollector(site, metrics_file, health))
    start_http_server(port, registry=registry)
    return registry
