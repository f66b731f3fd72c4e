"""Run a federation on Flower's simulation engine (Ray), one virtual SuperNode per site."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from client.app import ACTOR_FLWR_LOG_LEVEL
from client.app import app as client_app
from server.app import make_server_app
from server.settings import RunSettings
from skeletons.atomic import write_json
from skeletons.scenario import Scenario

log = logging.getLogger(__name__)


def client_resources(scenario: Scenario, device: str) -> dict[str, float]:
    """Per-site CPU and GPU share; GPU shares only apply when CUDA is there and wanted."""
    import torch

    cpus = max(s.num_cpus for s in scenario.sites)
    gpus = max(s.num_gpus for s in scenario.sites)
    use_gpu = device != "cpu" and torch.cuda.is_available()
    if use_gpu and gpus <= 0:
        gpus = 1.0 / min(len(scenario.sites), 4)  # let up to four sites share each GPU
    return {"num_cpus": cpus, "num_gpus": gpus if use_gpu else 0.0}


class _WithoutRunSimulationNotice(logging.Filter):
    """Drops Flower's notice that ``run_simulation`` is deprecated, and nothing else.

    ``fedsar-sim`` needs the in-process ``ServerApp`` that ``run_simulation`` takes (its
    progress lines and results come from it); ``flwr run .`` is the supported way to run
    the same apps without it. The notice would otherwise tell every user of
    ``fedsar-sim run`` to switch tools.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and "DEPRECATED FEATURE" in str(record.msg)
                    and "`run_simulation` function is deprecated" in str(record.args[0]))


def simulate(scenario: Scenario, settings: RunSettings, quiet: bool = False) -> dict[str, Any]:
    """Run the scenario with ``settings``; print one line per round; return results."""
    results: dict[str, Any] = {}

    def progress(record, num_rounds):
        if not quiet:
            print(record.progress_line(num_rounds), flush=True)

    server_app = make_server_app(settings, progress=progress, sink=results)
    resources = client_resources(scenario, settings.device)
    backend_config = {
        "client_resources": resources,
        "init_args": {"logging_level": logging.WARNING, "log_to_driver": True, "include_dashboard": False},
    }
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not log.isEnabledFor(logging.DEBUG):  # one progress line per round instead of Flower's and the loop's
        logging.getLogger("flwr").setLevel(logging.WARNING)
        logging.getLogger("server.loop").setLevel(logging.WARNING)
        # and in the sites' actors (which inherit the environment): no SecAgg+ stages or clipping notices
        os.environ.setdefault(ACTOR_FLWR_LOG_LEVEL, "WARNING")
    notice = _WithoutRunSimulationNotice()
    logging.getLogger("flwr").addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(scenario.sites),
                backend_config=backend_config,
            )
    finally:
        logging.getLogger("flwr").removeFilter(notice)
    if not results:
        raise RuntimeError("the simulation ended without results; see the log above")
    add_overhead(results, parallel_sites(scenario, resources))
    if settings.out_dir:
        write_json(Path(settings.out_dir) / "results.json", results)
    return results


def parallel_sites(scenario: Scenario, resources: dict[str, float]) -> int:
    """How many sites the engine can train at once with these per-site resources."""
    cpus = os.cpu_count() or 1
    slots = max(1, int(cpus // max(resources["num_cpus"], 1e-9)))
    return max(1, min(len(scenario.sites), slots))


def add_overhead(results: dict[str, Any], parallel: int) -> None:
    """Per round ``overhead_ratio``: wall time over the least wall time the sites' compute allows.

    With ``parallel`` sites training at once, a round cannot take less than
    ``max(slowest site, total compute / parallel)``; whatever the round took beyond that
    is the price of Flower, Ray, messaging and scheduling.
    """
    results["parallel_sites"] = parallel
    ratios = []
    for r in results["rounds"]:
        floor = max(r["compute_max_s"], r["compute_s"] / parallel)
        r["overhead_ratio"] = r["wall_s"] / floor if floor > 0 else None
        if r["overhead_ratio"] is not None:
            ratios.append(r["overhead_ratio"])
    steady = ratios[1:] or ratios  # round 1 includes starting the actors and loading data
    results["final"]["overhead_ratio"] = sum(steady) / len(steady) if steady else None
