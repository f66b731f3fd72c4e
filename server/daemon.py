"""The coordinator daemon behind ``fedsar-server start``.

It runs a Flower SuperLink with TLS and site authentication (runtime dependency
installation off: the coordinator runs the fedsar code installed on it, nothing a run
brings along), registers the enrolled sites' public keys and revokes keys no longer
listed, submits the federated run (``server.app:app`` with the ``[run]`` table as run
config), serves Prometheus metrics, and watches the run until it ends. With
``--resume`` the run continues from the last round checkpoint; with ``--new-run`` the
previous run's checkpoints, results and status are moved to ``previous/<time>/`` first,
so a new run starts at round 1 and nothing already saved is lost.

Files in the state folder: ``superlink.db`` (the SuperLink's state: registered sites,
runs), ``checkpoints/`` (one per round), ``status.json`` (written by the ServerApp after
each round), ``daemon.json`` (this daemon: pid, address, run id), ``run/`` (results
and global model), ``previous/`` (runs set aside by ``--new-run``), ``app/`` (the app
bundle submitted to the SuperLink), ``logs/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from server.checkpoint import CheckpointError, RoundCheckpoints, changed_message, changed_settings
from server.control import Control, ControlError
from server.federation_config import FederationConfig
from server.metrics import STATE_ENV
from server.status import read_status, write_status
from skeletons.atomic import write_json
from skeletons.clikit import counted
from skeletons.toml_text import toml_value
from skeletons.processes import lock_state_folder, processes_marked, spawn, stop_pids, stop_process

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
POLL_S = 2.0
NODES_EVERY_S = 5.0


class CoordinatorError(RuntimeError):
    """The coordinator cannot start or its SuperLink failed; the message says why and where to look."""


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def app_name(federation: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", federation.lower()).strip("-") or "federation"
    return f"fedsar-{slug}"[:60]


def write_app(config: FederationConfig, resume: bool) -> Path:
    """The app bundle's ``pyproject.toml``: components and the whole run config.

    It carries no code: coordinator and sites run the fedsar version installed on
    their own machines, and runtime dependency installation is off on both.
    """
    run = dict(config.run)
    run.update({
        "federation": config.name,
        "out-dir": str(config.out_dir),
        "checkpoint-dir": str(config.checkpoint_dir),
        "status-file": str(config.status_file),
        "resume": bool(resume),
    })
    lines = [
        "# Written by fedsar-server for each run; edit federation.toml instead.",
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{app_name(config.name)}"', 'version = "1.0.0"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "fedsar"', "",
        "[tool.flwr.app.components]", 'serverapp = "server.app:app"', 'clientapp = "client.app:app"', "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in sorted(run.items())]
    config.app_dir.mkdir(parents=True, exist_ok=True)
    path = config.app_dir / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return config.app_dir


def superlink_command(config: FederationConfig) -> list[str]:
    return [
        "flower-superlink",
        "--ssl-ca-certfile", str(config.ca_certificate),
        "--ssl-certfile", str(config.certificate),
        "--ssl-keyfile", str(config.private_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation", "subprocess",
        "--host", config.host,
        "--port", str(config.port),
        "--database", config.database,
    ]


def progress_line(doc: dict[str, Any]) -> str:
    last = doc.get("last_round") or {}
    acc = last.get("mean_accuracy")
    acc_s = "-" if acc is None else f"{100 * acc:.1f}%"
    return (
        f"round {last.get('round')}/{doc.get('num_rounds')}: {counted(last.get('sites_ok', 0), 'site')} "
        f"aggregated, {last.get('sites_failed')} failed or dropped, "
        f"mean accuracy {acc_s}, {last.get('wall_s', 0.0):.1f}s"
        + (f"; dropped: {'; '.join(last['dropped'])}" if last.get("dropped") else "")
    )


def status_of_run(doc: dict[str, Any] | None, requested_at: float) -> dict[str, Any]:
    """The status file's document if the run it describes started after ``requested_at``
    (when the daemon asked for the current run), else empty: until the new ServerApp
    writes its first status the file is still the previous run's, in the same state folder."""
    if not doc or float(doc.get("started_at") or 0.0) < requested_at:
        return {}
    return doc


class Coordinator:
    """One coordinator: its SuperLink, its enrolled sites and its current run."""

    def __init__(self, config: FederationConfig, resume: bool = False, out: TextIO = sys.stdout,
                 new_run: bool = False) -> None:
        if resume and new_run:
            raise CoordinatorError("--resume continues the last run and --new-run sets it aside: choose one")
        self.config = config
        self.resume = resume
        self.new_run = new_run
        self.out = out
        self.superlink: subprocess.Popen | None = None
        self.control: Control | None = None
        self.run_id: int | None = None
        self.run_requested_at = 0.0  # the status file is this run's once its run started after this
        self.run_status = ""
        self.enrolled: dict[str, int] = {}
        self.view: dict[str, Any] = {"up": 0.0}
        self._stopping = False
        self._lock_fh: TextIO | None = None
        self._logs_stop = threading.Event()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- preparation -----------------------------------------------------------------
    def preflight(self) -> dict[str, bytes]:
        """Check certificates, keys, scenario and state folder; return the sites' public keys (PEM)."""
        from privacy.keys import (
            KeyFileError, certificate_hosts, public_key_pem, read_certificate, read_site_public_key,
        )
        from skeletons.scenario import ScenarioError, load_scenario

        problems = []
        keys: dict[str, bytes] = {}
        try:
            cert = read_certificate(self.config.certificate, "coordinator certificate")
            host = self.config.address.rpartition(":")[0].strip("[]")
            hosts = certificate_hosts(cert)
            if host not in hosts:
                problems.append(f"coordinator certificate {self.config.certificate} is not valid for {host!r} "
                                f"(it covers {sorted(hosts)}); reissue it with fedsar-privacy keys --hosts")
            if "127.0.0.1" not in hosts and "localhost" not in hosts:
                problems.append(f"coordinator certificate {self.config.certificate} must also cover 127.0.0.1 or localhost "
                                "(the SuperLink's own ServerApp connects over loopback)")
        except KeyFileError as err:
            problems.append(str(err))
        for path, what in ((self.config.private_key, "coordinator private key"), (self.config.ca_certificate, "CA certificate")):
            if not path.is_file():
                problems.append(f"{what} {path} does not exist")
            elif not os.access(path, os.R_OK):
                problems.append(f"{what} {path} cannot be read by this user")
        for site in self.config.sites:
            try:
                keys[site.name] = public_key_pem(read_site_public_key(site.public_key))
            except KeyFileError as err:
                problems.append(f"site {site.name!r}: {err}")
        settings = self.config.settings()
        try:
            scenario = load_scenario(settings.scenario)
            if len(scenario.sites) != len(self.config.sites):
                log.warning("scenario %s lists %d sites, federation.toml enrols %d", scenario.name,
                            len(scenario.sites), len(self.config.sites))
        except ScenarioError as err:
            problems.append(f"[run] scenario: {err}")
        try:  # a strategy or privacy options that cannot start fail here rather than in the ServerApp
            from privacy.coordinator import check_run_config
            from server.federation import check_group_heads
            from strategies.registry import STRATEGY_NAMES

            if settings.strategy not in STRATEGY_NAMES:
                raise ValueError(f"strategy = {settings.strategy!r} is unknown; choose from {', '.join(STRATEGY_NAMES)}")
            check_group_heads(settings, check_run_config(self.config.run))
        except ValueError as err:
            problems.append(f"[run] {err}")
        checkpoints = RoundCheckpoints(self.config.checkpoint_dir)
        if checkpoints.exists() and self.resume:  # a [run] the checkpoint cannot go on with fails before the SuperLink starts
            try:
                changed = changed_settings(checkpoints.manifest(), settings)
            except CheckpointError as err:
                problems.append(str(err))
            else:
                if changed:
                    problems.append(changed_message(checkpoints.manifest_path, changed))
        if checkpoints.exists() and not (self.resume or self.new_run):
            problems.append(
                f"{self.config.checkpoint_dir} holds a checkpoint of round {checkpoints.latest_round()}: "
                "start with --resume to continue that run, or with --new-run to set it aside and start afresh"
            )
        if problems:
            raise CoordinatorError(f"coordinator {self.config.name!r} ({self.config.source}) cannot start:\n  - "
                                   + "\n  - ".join(problems))
        return keys

    def _take_lock(self) -> None:
        self._lock_fh = lock_state_folder(self.config.state_dir)
        if self._lock_fh is None:
            raise CoordinatorError(f"another fedsar-server already runs with state folder {self.config.state_dir}")

    def _write_daemon_file(self) -> None:
        write_json(self.config.daemon_file, {
            "pid": os.getpid(), "address": self.config.address, "federation": self.config.name,
            "run_id": self.run_id, "run_status": self.run_status, "sites": self.enrolled,
            "metrics_port": self.config.metrics_port, "updated_at": time.time(),
        })

    # -- lifecycle ---------------------------------------------------------------------
    def set_aside_previous_run(self) -> Path | None:
        """Move the last run's checkpoints, results and status to ``previous/<time>/``.

        A new run would otherwise refuse to start over the checkpoints, and then overwrite
        ``run/``'s results and global model; moved, they stay whole (a rename on the same
        disk). Called with the state folder's lock held, so no live coordinator uses them.
        Returns the folder they went to, or None when there was nothing to move."""
        state = self.config.state_dir
        parts = [p for p in (self.config.checkpoint_dir, self.config.out_dir, self.config.status_file) if p.exists()]
        if not parts:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in parts)))
        target = state / "previous" / stamp
        suffix = 1
        while target.exists():
            suffix += 1
            target = state / "previous" / f"{stamp}-{suffix}"
        target.mkdir(parents=True)
        for part in parts:
            part.rename(target / part.name)
        self.say(f"set the previous run aside ({', '.join(p.name for p in parts)}) in {target}")
        return target

    def stop_leftovers(self) -> None:
        """Stop what a killed coordinator with this state folder left running.

        Its SuperExec would otherwise reconnect to the new SuperLink on the same address,
        claim the new run's ServerApp task, and take it down when it notices its own
        SuperLink is gone. The state folder's lock, held here, means no live coordinator
        owns these processes.
        """
        leftovers = processes_marked(STATE_ENV, str(self.config.state_dir))
        if leftovers:
            stop_pids(leftovers)
            self.say(f"stopped {len(leftovers)} processes left over from the previous coordinator process "
                     f"(pids {', '.join(map(str, leftovers))})")

    def start_superlink(self) -> None:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # flower-* of this install
        env["FLWR_HOME"] = str(self.config.state_dir / "flwr")
        env[STATE_ENV] = str(self.config.state_dir)  # marks every process the SuperLink starts
        log_path = self.config.log_dir / "superlink.log"
        self.superlink = spawn(superlink_command(self.config), log_path, env)
        self.control = Control(self.config.address, self.config.ca_certificate, timeout=20.0)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise CoordinatorError(
                    f"the SuperLink exited with code {self.superlink.returncode}; see {log_path}:\n{tail(log_path)}"
                )
            if self.control.ping():
                self.view["up"] = 1.0
                return
            time.sleep(0.5)
        raise CoordinatorError(f"the SuperLink did not answer on {self.config.address} within {READY_TIMEOUT_S:.0f}s; see {log_path}")

    def enrol(self, keys: dict[str, bytes]) -> None:
        """Register every listed site key; unregister keys that are no longer listed."""
        assert self.control is not None
        for name, pem in keys.items():
            self.enrolled[name] = self.control.register_node(pem, name)
        wanted = set(keys.values())
        for node in self.control.list_nodes():
            if node.public_key not in wanted and node.status != "unregistered":
                self.control.unregister_node(node.node_id)
                self.say(f"revoked node {node.node_id} ({node.name or 'unnamed'}): its key is no longer enrolled")
        self.say(f"enrolled {len(keys)} sites: {', '.join(f'{n} (node {i})' for n, i in self.enrolled.items())}")

    def wait_for_sites(self) -> None:
        """Wait up to ``wait_for_sites_s`` for every enrolled site to connect before the run.

        A round starts as soon as ``min-sites`` sites are connected and asks only those, so
        without the wait a site that connects a moment late misses round 1.
        """
        limit = self.config.wait_for_sites_s
        if limit <= 0:
            return
        deadline = time.monotonic() + limit
        while not self._stopping:
            try:
                self.refresh_nodes()
            except ControlError as err:
                log.warning("%s", err)
            online = {name for name, up in self.view.get("sites", {}).items() if up}
            missing = sorted(set(self.enrolled) - online)
            if not missing:
                self.say(f"all {len(self.enrolled)} enrolled sites connected")
                return
            if time.monotonic() >= deadline:
                self.say(f"starting without {', '.join(missing)}: not connected after {limit:.0f}s")
                return
            time.sleep(1.0)

    def submit(self) -> None:
        assert self.control is not None
        previous = json.loads(self.config.daemon_file.read_text()) if self.config.daemon_file.is_file() else {}
        old = previous.get("run_id")
        if old:
            try:
                entry = self.control.run(int(old))
            except ControlError:
                entry = None  # a SuperLink without a database does not know the old run
            if entry is not None and not entry.finished:
                self.control.stop_run(int(old))
                self.say(f"stopped run {old} left over from the previous coordinator process")
        resume = self.resume and RoundCheckpoints(self.config.checkpoint_dir).exists()
        if self.resume and not resume:
            self.say("--resume: no checkpoint yet, starting at round 1")
        if resume:
            self.say(f"resuming after round {RoundCheckpoints(self.config.checkpoint_dir).latest_round()}")
        app = write_app(self.config, resume)
        self.run_requested_at = time.time()
        self.run_id = self.control.start_run(app)
        self.run_status = "pending"
        self._write_daemon_file()
        self._follow_logs(self.run_id)
        self.say(f"run {self.run_id} started: {self.config.settings().strategy} on {self.config.settings().scenario}")

    def _follow_logs(self, run_id: int) -> None:
        """Copy the ServerApp's log (screening decisions, round progress) to logs/serverapp.log."""
        path = self.config.log_dir / "serverapp.log"
        path.parent.mkdir(parents=True, exist_ok=True)

        def follow() -> None:
            with open(path, "a") as sink, Control(self.config.address, self.config.ca_certificate, timeout=30.0) as control:
                sink.write(f"\n--- run {run_id}\n")
                control.follow_logs(run_id, sink, self._logs_stop)

        threading.Thread(target=follow, name="serverapp-log", daemon=True).start()

    def refresh_nodes(self) -> None:
        assert self.control is not None
        by_id = {v: k for k, v in self.enrolled.items()}
        nodes = self.control.list_nodes()
        sites = {by_id[n.node_id]: 1.0 if n.status == "online" else 0.0 for n in nodes if n.node_id in by_id}
        self.view.update({"sites": sites, "connected": sum(sites.values()), "enrolled": len(self.enrolled)})

    def serve_metrics(self) -> None:
        if not self.config.metrics_port:
            return
        from server.metrics import serve_coordinator_metrics

        serve_coordinator_metrics(self.config.metrics_port, self.config.metrics_host, self.config.state_dir,
                                  self.config.status_file, lambda: dict(self.view))
        self.say(f"metrics on http://{self.config.metrics_host}:{self.config.metrics_port}/metrics")

    def watch(self) -> bool:
        """Follow the run until it ends (or the daemon is told to stop); True on success."""
        assert self.control is not None and self.run_id is not None
        # the status file may still be an earlier run's: a resumed run goes on after its rounds, a new one at 1
        seen_round = int((read_status(self.config.status_file) or {}).get("rounds_completed", 0)) if self.resume else 0
        next_nodes = 0.0
        announced = False  # with keep_running the loop goes on after the run: its end is said once
        log_path = self.config.log_dir / "superlink.log"
        while not self._stopping:
            if self.superlink is not None and self.superlink.poll() is not None:
                self.view["up"] = 0.0
                raise CoordinatorError(f"the SuperLink exited with code {self.superlink.returncode}; see {log_path}:\n{tail(log_path)}")
            try:
                entry = self.control.run(self.run_id)
                if time.monotonic() >= next_nodes:
                    self.refresh_nodes()
                    next_nodes = time.monotonic() + NODES_EVERY_S
            except ControlError as err:
                log.warning("%s", err)
                entry = None
            doc = status_of_run(read_status(self.config.status_file), self.run_requested_at)
            if doc.get("last_round") and doc["last_round"]["round"] > seen_round:
                seen_round = doc["last_round"]["round"]
                self.say(progress_line(doc))
            if entry is not None and entry.status != self.run_status:
                self.run_status = entry.status
                self._write_daemon_file()
            if entry is not None and entry.finished and not announced:
                announced = True
                if entry.succeeded:
                    self.say(f"run {self.run_id} completed; results in {self.config.out_dir}")
                else:
                    self.say(f"run {self.run_id} ended: {entry.status} {entry.details}".rstrip())
                    if doc.get("state") == "running":  # the ServerApp died before it could say so
                        doc.update(state="failed", error=entry.details or entry.status)
                        write_status(self.config.status_file, doc)
                if not self.config.keep_running:
                    return entry.succeeded
            time.sleep(POLL_S)
        return False

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.say(f"received signal {signum}; stopping")
        self._stopping = True

    def run(self) -> int:
        """The whole lifecycle; returns the process exit code."""
        logging.getLogger("httpx").setLevel(logging.WARNING)
        keys = self.preflight()
        self._take_lock()
        self.stop_leftovers()
        if self.new_run:
            self.set_aside_previous_run()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.start_superlink()
            self.say(f"SuperLink up on {self.config.host}:{self.config.port} (TLS, site authentication on)")
            self.enrol(keys)
            self.serve_metrics()
            self.wait_for_sites()
            if self._stopping:  # told to stop while it waited: no run to start
                return 1
            self.submit()
            ok = self.watch()
            return 0 if ok else 1
        finally:
            self.view["up"] = 0.0
            self._logs_stop.set()
            if self.control is not None:
                self.control.close()
            stop_process(self.superlink)
            # the SuperExec and the ServerApp run in sessions of their own: they would outlive
            # the SuperLink for a minute or more (until they notice it is gone)
            stop_pids(processes_marked(STATE_ENV, str(self.config.state_dir)))
