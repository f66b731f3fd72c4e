"""A whole federation on one machine's loopback: keys, configs and real processes.

Used by the deployment tests, the load benchmark (``python -m server.loadtest``) and
anyone who wants to try a deployment locally: it writes a CA and keys, a scenario of
tiny synthetic sites, the coordinator's ``federation.toml`` and one ``site.toml`` per
site, then starts ``fedsar-server`` and ``fedsar-client`` as separate process groups
(so that a test can kill one as abruptly as a power cut).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from privacy.keys import KeyLayout, generate_keys
from server.status import read_status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_options(index: int, frames: int = 16) -> str:
    yaw = (index * 37) % 120 - 60
    return (f"{{ num_classes = 4, num_subjects = 2, samples_per_class_subject = 2, num_frames = {frames}, "
            f"seed = {index + 1}, domain = {{ name = \"d{index}\", yaw = {float(yaw)}, noise_std = 0.02 }} }}")


@dataclass
class LoopbackFederation:
    """Configs and processes of a coordinator and its sites under ``root``."""

    root: Path
    sites: list[str]
    rounds: int = 2
    min_sites: int = 0
    name: str = "loopback"
    extra_sites: list[str] = field(default_factory=list)  # enrolled, but not in the scenario
    run: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    metrics_port: int = 0
    executor: str = "warm"
    site_privacy: dict[str, str] = field(default_factory=dict)  # site -> lines of its [privacy] table
    wait_for_sites_s: float = 120.0  # every enrolled site is connected before round 1 (or this passes)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(self.root / "keys")

    @property
    def federation_toml(self) -> Path:
        return self.root / "federation.toml"

    @property
    def state(self) -> Path:
        return self.root / "state" / "coordinator"

    def site_toml(self, site: str) -> Path:
        return self.root / f"{site}.toml"

    def site_state(self, site: str) -> Path:
        return self.root / "state" / site

    # -- files ---------------------------------------------------------------------------
    def write(self, key_dir: Path | None = None) -> "LoopbackFederation":
        """Keys (or a link to existing ones), scenario, federation.toml and every site.toml."""
        self.root.mkdir(parents=True, exist_ok=True)
        everyone = self.sites + self.extra_sites
        if key_dir is not None:
            os.symlink(key_dir, self.root / "keys")
        else:
            generate_keys(self.root / "keys", everyone, ["localhost", "127.0.0.1"])
        scenario = [
            f'name = "{self.name}"', 'layout = "kinect-v1"', "num_frames = 16",
            'model = { channels = [8, 8], strides = [1, 2], temporal_kernel = 3, streams = ["joint"], norm_groups = 4 }',
        ]
        for i, site in enumerate(self.sites):
            scenario += ["", "[[sites]]", f'name = "{site}"', 'dataset = "synthetic"', f"options = {site_options(i)}",
                         'split = { test_fraction = 0.3, by = "sample" }']
        (self.root / "scenario.toml").write_text("\n".join(scenario) + "\n")
        run = {
            "scenario": "scenario.toml", "strategy": "fsar", "num-server-rounds": self.rounds, "local-epochs": 1,
            "batch-size": 16, "learning-rate": 0.05, "min-sites": self.min_sites, "device": "cpu", "seed": 0,
            "timeout-s": 300.0, **self.run,
        }
        lines = [
            "[federation]", f'name = "{self.name}"', 'state_dir = "state/coordinator"', "",
            "[coordinator]", 'host = "127.0.0.1"', f"port = {self.port}", f'address = "localhost:{self.port}"',
            'certificate = "keys/server.crt"', 'private_key = "keys/server.key"', 'ca_certificate = "keys/ca.crt"',
            f"metrics_port = {self.metrics_port}", 'metrics_host = "127.0.0.1"',
            f"wait_for_sites_s = {self.wait_for_sites_s}", "", "[run]",
        ]
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in run.items()]
        for site in everyone:
            lines += ["", "[[sites]]", f'name = "{site}"', f'public_key = "keys/sites/{site}.pub"']
        self.federation_toml.write_text("\n".join(lines) + "\n")
        for i, site in enumerate(everyone):
            self.write_site(site, i)
        return self

    def write_site(self, site: str, index: int, key: str | None = None, address: str | None = None) -> Path:
        text = "\n".join([
            "[site]", f'name = "{site}"', f'state_dir = "state/{site}"', "",
            "[coordinator]", f'address = "{address or f"localhost:{self.port}"}"', 'ca_certificate = "keys/ca.crt"', "",
            "[keys]", f'private_key = "{key or f"keys/sites/{site}.key"}"', "",
            "[data]", 'dataset = "synthetic"', 'layout = "kinect-v1"', f"options = {site_options(index)}",
            'split = { test_fraction = 0.3, by = "sample" }', "",
            "[node]", f'executor = "{self.executor}"', "",
        ] + (["[privacy]", self.site_privacy[site], ""] if site in self.site_privacy else []))
        path = self.site_toml(site)
        path.write_text(text)
        return path

    # -- processes -------------------------------------------------------------------------
    def _start(self, label: str, cmd: list[str]) -> subprocess.Popen:
        log_dir = self.root / "out"
        log_dir.mkdir(exist_ok=True)
        out = open(log_dir / f"{label}.log", "a")  # noqa: SIM115 - the child writes to it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True)
        self.procs[label] = proc
        return proc

    def output(self, label: str) -> str:
        path = self.root / "out" / f"{label}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def coordinator_report(self, lines: int = 40) -> str:
        """The coordinator's output and the ends of its ServerApp and SuperLink logs, for a failed check."""
        parts = [self.output("coordinator")]
        for name in ("serverapp.log", "superlink.log"):
            path = self.state / "logs" / name
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- last {len(tail)} lines of {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def start_coordinator(self, resume: bool = False, new_run: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "server.cli", "start", "--config", str(self.federation_toml)]
        return self._start("coordinator", cmd + (["--resume"] if resume else []) + (["--new-run"] if new_run else []))

    def start_site(self, site: str, config: Path | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "client.cli", "start", "--site", str(config or self.site_toml(site))]
        return self._start(site, cmd)

    def kill(self, label: str, sig: int = signal.SIGKILL) -> None:
        """Signal a daemon's whole process group (SIGKILL: like pulling the plug)."""
        proc = self.procs.get(label)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self, grace: float = 20.0) -> None:
        """SIGTERM every daemon's group at once, then SIGKILL what is left after ``grace``."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for label in list(self.procs):
            self.kill(label, signal.SIGKILL)

    # -- observation -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return read_status(self.state / "status.json") or {}

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float, poll: float = 1.0,
                 coordinator_must_run: bool = True) -> Any:
        """Poll ``check`` until it returns something truthy; fail with the logs after ``timeout``
        (or as soon as the coordinator exits, when it must keep running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            coordinator = self.procs.get("coordinator")
            if coordinator_must_run and coordinator is not None and coordinator.poll() is not None:
                break
            time.sleep(poll)
        raise TimeoutError(f"{what}: not reached after {timeout:.0f}s\n--- coordinator:\n{self.output('coordinator')[-3000:]}"
                           f"\n--- status: {json.dumps(self.status().get('rounds', []))}")

    def wait_rounds(self, n: int, timeout: float) -> dict[str, Any]:
        return self.wait_for(f"{n} rounds", lambda: self.status() if self.status().get("rounds_completed", 0) >= n else None,
                             timeout)

    def wait_coordinator_exit(self, timeout: float) -> int:
        proc = self.procs["coordinator"]
        self.wait_for("coordinator exit", lambda: proc.poll() is not None, timeout, coordinator_must_run=False)
        return int(proc.returncode)
