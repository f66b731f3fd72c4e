"""Load benchmark: one coordinator and N site daemons on this machine's loopback.

``python -m server.loadtest --sites 20 --rounds 3`` writes keys and configs for N tiny
synthetic sites, starts ``fedsar-server`` and N ``fedsar-client`` daemons (TLS and site
authentication on, as in production), waits for the run and reports how long the sites
took to connect, each round's wall time and participation, failures, and the memory
all processes used together (proportional set size, so shared pages count once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from server.control import Control, ControlError
from server.loopback import LoopbackFederation


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mb(groups: set[int]) -> tuple[float, int]:
    """(total PSS in MB, number of processes) of every process in the given process groups."""
    total, count = 0, 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _pgid(int(entry)) in groups:
            total += _pss_kb(int(entry))
            count += 1
    return total / 1024.0, count


def online_sites(fed: LoopbackFederation) -> int:
    try:
        with Control(f"localhost:{fed.port}", fed.keys.ca_cert, timeout=10.0) as link:
            return sum(1 for n in link.list_nodes() if n.status == "online")
    except ControlError:
        return 0


def run_load(sites: int, rounds: int, root: Path, timeout: float, min_fraction: float, executor: str = "warm") -> dict:
    names = [f"site-{i:03d}" for i in range(sites)]
    fed = LoopbackFederation(root=root, sites=names, rounds=rounds, min_sites=max(1, int(sites * min_fraction)),
                             name=f"load-{sites}", run={"timeout-s": timeout}, executor=executor)
    fed.write()
    started = time.monotonic()
    peak_mb, peak_procs = 0.0, 0
    connected_s = None
    try:
        for site in names:
            fed.start_site(site)
        fed.start_coordinator()
        groups = {p.pid for p in fed.procs.values()}
        deadline = started + timeout * (rounds + 1)
        while time.monotonic() < deadline:
            mb, procs = memory_mb(groups)
            if mb > peak_mb:
                peak_mb, peak_procs = mb, procs
            if connected_s is None and online_sites(fed) >= sites:
                connected_s = time.monotonic() - started
            if fed.procs["coordinator"].poll() is not None:
                break
            time.sleep(5)
        exit_code = fed.procs["coordinator"].poll()
        status = fed.status()
        daemons_down = [s for s in names if fed.procs[s].poll() is not None]
    finally:
        fed.stop_all()
    total_s = time.monotonic() - started
    per_round = [
        {"round": r["round"], "wall_s": round(r["wall_s"], 2), "sites_ok": r["sites_ok"], "sites_failed": r["sites_failed"],
         "dropped": len(r["dropped"])}
        for r in status.get("rounds", [])
    ]
    walls = [r["wall_s"] for r in per_round]
    return {
        "sites": sites,
        "executor": executor,
        "rounds_planned": rounds,
        "rounds_completed": status.get("rounds_completed", 0),
        "coordinator_exit": exit_code,
        "all_connected_s": None if connected_s is None else round(connected_s, 1),
        "total_s": round(total_s, 1),
        "round_wall_s": {"mean": round(sum(walls) / len(walls), 2) if walls else None,
                         "max": max(walls) if walls else None},
        "rounds": per_round,
        "site_failures": int(sum(r["sites_failed"] for r in per_round)),
        "site_daemons_down": daemons_down,
        "peak_memory_mb": round(peak_mb, 0),
        "peak_processes": peak_procs,
        "cpus": os.cpu_count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20, help="number of site daemons")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a round may wait for replies")
    parser.add_argument("--min-fraction", type=float, default=1.0, help="fraction of sites a round needs")
    parser.add_argument("--executor", default="warm", choices=("warm", "subprocess"),
                        help="how sites run their tasks: a warm forking process, or Flower's fresh process per message")
    parser.add_argument("--root", default="", help="folder for keys, configs, state and logs (default: a temporary one)")
    parser.add_argument("--json", default="", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.sites < 1:
        parser.error("--sites must be at least 1")
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="fedsar-load-"))
    print(f"{args.sites} sites ({args.executor} executor), {args.rounds} rounds; files under {root}", flush=True)
    report = run_load(args.sites, args.rounds, root, args.timeout, args.min_fraction, args.executor)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["rounds_completed"] == args.rounds and report["coordinator_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
