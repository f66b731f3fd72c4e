"""The site daemon behind ``fedsar-client start``.

It checks that the site can work at all (its key, the federation CA, its data, a
writable state folder) and refuses to start with a message naming what is missing.
Then it runs a Flower SuperNode that connects to the coordinator over TLS and proves
the site's identity with its private key, runs the site's ClientApp tasks (in a warm
process, see ``client.warm_runner``, or with Flower's own per-task processes), serves
the site's Prometheus metrics, and restarts the SuperNode if it dies. It stops for
good when the coordinator refuses the site's key or certificate, because retrying
cannot fix that.

Files in the site's state folder: ``personal/`` (personal parameters), the privacy
ledger, ``metrics.json``, ``flwr/`` (Flower's app cache), ``logs/`` and ``daemon.lock``
(one daemon per state folder; it also stops what a killed one left behind).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from client.site_config import SiteConfig
from skeletons.processes import free_port, lock_state_folder, processes_marked, spawn, stop_pids, stop_process

log = logging.getLogger(__name__)

# the first marker found in the SuperNode's log wins: the more specific ones come first (a
# hostname mismatch is also reported as CERTIFICATE_VERIFY_FAILED)
REFUSALS = {
    "[code: 2004]": "the coordinator refused this site's key: it is not enrolled (or was revoked)",
    "[code: 2001]": "the coordinator refused this site: site authentication is on and no key was given",
    "Hostname mismatch": "the coordinator's TLS certificate is not valid for the host in [coordinator] address",
    "CERTIFICATE_VERIFY_FAILED": "the coordinator's TLS certificate is not signed by the site's CA certificate",
    "SuperNode authentication requires a secure TLS connection": "site authentication needs TLS",
}
RESTART_MAX_S = 30.0
EXIT_REFUSED = 3
REFUSALS_BEFORE_GIVING_UP = 4  # a coordinator that just restarted may not have enrolled its sites yet
STATE_ENV = "FEDSAR_SITE_STATE"  # set by fedsar-client for every process it starts


class SiteDaemonError(RuntimeError):
    """The site cannot (or can no longer) take part; the message says why."""


def refusal_in(text: str) -> str | None:
    """Why the coordinator refused this site, when its SuperNode log says so."""
    for marker, reason in REFUSALS.items():
        if marker in text:
            return reason
    return None


class SiteDaemon:
    """One site: its SuperNode, its task runner and its metrics."""

    def __init__(self, site: SiteConfig, out: TextIO = sys.stdout) -> None:
        self.site = site
        self.out = out
        self.runtime_port = site.runtime_port or free_port()
        self.supernode: subprocess.Popen | None = None
        self.runner: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = False
        self._log_offset = 0
        self._lock_fh: Any = None

    def say(self, text: str) -> None:
        print(f"[{self.site.name}] {text}", file=self.out, flush=True)

    @property
    def supernode_log(self) -> Path:
        return self.site.log_dir / "supernode.log"

    def env(self) -> dict[str, str]:
        from client.metrics import METRICS_ENV

        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # flower-* of this install
        env["FLWR_HOME"] = str(self.site.state_dir / "flwr")
        env[METRICS_ENV] = str(self.site.metrics_file)
        env["FEDSAR_SITE_CONFIG"] = str(self.site.source)
        env[STATE_ENV] = str(self.site.state_dir)  # marks every process the SuperNode starts too
        return env

    def _take_lock(self) -> None:
        self._lock_fh = lock_state_folder(self.site.state_dir)
        if self._lock_fh is None:
            raise SiteDaemonError(f"another fedsar-client already runs with state folder {self.site.state_dir}")

    def stop_leftovers(self) -> None:
        """Stop what a killed site daemon with this state folder left running.

        Flower starts the SuperNode's ClientApp processes in sessions of their own, so a
        ``kill -9`` of the daemon's process group can leave them behind; with a fixed
        ``runtime_port`` they would connect to the new SuperNode and take its tasks. The
        state folder's lock, held here, means no live daemon owns these processes.
        """
        leftovers = processes_marked(STATE_ENV, str(self.site.state_dir))
        if leftovers:
            stop_pids(leftovers)
            self.say(f"stopped {len(leftovers)} processes left over from the previous site daemon "
                     f"(pids {', '.join(map(str, leftovers))})")

    def supernode_command(self) -> list[str]:
        config_path = str(self.site.source)
        if any(c in config_path for c in ' "\''):
            raise SiteDaemonError(f"the site config path {config_path!r} must not contain spaces or quotes")
        cmd = [
            "flower-supernode",
            "--superlink", self.site.address,
            "--root-certificates", str(self.site.ca_certificate),
            "--auth-supernode-private-key", str(self.site.private_key),
            "--node-config", f'site-config="{config_path}"',
            "--isolation", "process" if self.site.executor == "warm" else "subprocess",
            "--host", "127.0.0.1",
            "--port", str(self.runtime_port),
        ]
        if self.site.max_wait_s > 0:
            cmd += ["--max-wait-time", str(self.site.max_wait_s)]
        return cmd

    def start_supernode(self) -> None:
        try:
            self._log_offset = self.supernode_log.stat().st_size
        except OSError:
            self._log_offset = 0
        self.supernode = spawn(self.supernode_command(), self.supernode_log, self.env())

    def start_runner(self) -> None:
        if self.site.executor != "warm":
            return
        cmd = [sys.executable, "-m", "client.warm_runner", "--runtime-api-address", f"127.0.0.1:{self.runtime_port}",
               "--parent-pid", str(os.getpid())]
        self.runner = spawn(cmd, self.site.log_dir / "runner.log", self.env())

    def new_log(self) -> str:
        """What the SuperNode logged since the last call (the log can grow for months)."""
        try:
            with open(self.supernode_log, "rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read(1 << 20)
                self._log_offset = fh.tell()
        except OSError:
            return ""
        return chunk.decode(errors="replace")

    def health(self) -> dict[str, float]:
        up = 1.0 if self.supernode is not None and self.supernode.poll() is None else 0.0
        return {"up": up, "restarts": float(self.restarts)}

    def serve_metrics(self) -> None:
        if not self.site.metrics_port:
            return
        from client.metrics import serve_site_metrics

        serve_site_metrics(self.site.metrics_port, self.site.name, self.site.metrics_file, self.health)
        self.say(f"metrics on http://0.0.0.0:{self.site.metrics_port}/metrics")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.say(f"received signal {signum}; stopping")
        self._stopping = True

    def supervise(self) -> int:
        """Keep the SuperNode and the runner alive until told to stop or refused."""
        backoff = 1.0
        connected = False
        refusals = 0
        recent = ""
        while not self._stopping:
            recent = (recent + self.new_log())[-8192:]  # markers may straddle two reads
            text = recent
            reason = refusal_in(text)
            if reason is not None:
                stop_process(self.supernode, 5)
                refusals += 1
                if refusals >= REFUSALS_BEFORE_GIVING_UP:
                    raise SiteDaemonError(
                        f"{reason} (coordinator {self.site.address}, key {self.site.private_key}); see {self.supernode_log}"
                    )
                self.say(f"{reason}; trying again in {backoff:.0f}s")
                time.sleep(backoff)
                backoff = min(RESTART_MAX_S, backoff * 2)
                self.start_supernode()
                recent = ""
                connected = False
                continue
            if not connected and "SuperNode ID:" in text:
                connected = True
                node = text.rsplit("SuperNode ID:", 1)[1].split()[0]
                self.say(f"connected to {self.site.address} as node {node}")
                recent = ""
            if self.supernode is not None and self.supernode.poll() is not None:
                code = self.supernode.returncode
                self.restarts += 1
                self.say(f"SuperNode exited with code {code}; restarting in {backoff:.0f}s (see {self.supernode_log})")
                time.sleep(backoff)
                backoff = min(RESTART_MAX_S, backoff * 2)
                connected = False
                self.start_supernode()
                recent = ""
                continue
            if connected:
                backoff = 1.0
                refusals = 0
            if self.runner is not None and self.runner.poll() is not None:
                self.say(f"task runner exited with code {self.runner.returncode}; restarting it")
                self.start_runner()
            time.sleep(0.5)
        return 0

    def run(self, check_data: bool = True) -> int:
        from client.site_config import check_site_ready

        logging.getLogger("httpx").setLevel(logging.WARNING)
        check_site_ready(self.site, load_data=check_data)
        self._take_lock()
        self.stop_leftovers()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.say(f"starting: coordinator {self.site.address}, data {self.site.spec.dataset}"
                 f"{' at ' + str(self.site.data_path) if self.site.data_path else ''}, state {self.site.state_dir}")
        try:
            self.start_supernode()
            self.start_runner()
            self.serve_metrics()
            return self.supervise()
        finally:
            stop_process(self.runner, 5)
            stop_process(self.supernode)
