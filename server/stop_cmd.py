"""``fedsar-server stop --config federation.toml``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the coordinator's federation.toml")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the coordinator to stop")


def run(args: argparse.Namespace) -> int:
    from server.federation_config import FederationConfigError, load_federation_config
    from server.status_cmd import daemon_alive

    try:
        config = load_federation_config(args.config)
    except FederationConfigError as err:
        raise UserError(str(err)) from None
    if not daemon_alive(config):
        print(f"no coordinator runs with state folder {config.state_dir}")
        return 0
    pid = int(json.loads(config.daemon_file.read_text())["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline and daemon_alive(config):
        time.sleep(0.5)
    if daemon_alive(config):
        raise UserError(f"coordinator (pid {pid}) still runs after {args.wait:.0f}s")
    print(f"coordinator (pid {pid}) stopped")
    return 0
