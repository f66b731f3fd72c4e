"""``fedsar-server status --config federation.toml [--json]``."""

from __future__ import annotations

import argparse
import fcntl
import json
from typing import Any

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the coordinator's federation.toml")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def daemon_alive(config: Any) -> bool:
    """True while a coordinator daemon holds the state folder's lock."""
    lock = config.state_dir / "daemon.lock"
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def gather(config: Any) -> dict[str, Any]:
    """Status file, daemon file and (when the coordinator runs) the SuperLink's view of the sites."""
    from server.control import Control, ControlError
    from server.status import read_status

    daemon = json.loads(config.daemon_file.read_text()) if config.daemon_file.is_file() else None
    alive = daemon_alive(config)
    if daemon is not None:
        daemon["alive"] = alive
    nodes = None
    if alive:
        try:
            with Control(config.address, config.ca_certificate, timeout=10.0) as control:
                names = {v: k for k, v in (daemon or {}).get("sites", {}).items()}
                nodes = [
                    {"name": names.get(n.node_id, n.name or "?"), "node_id": n.node_id, "status": n.status}
                    for n in control.list_nodes() if n.status != "unregistered"
                ]
                if daemon and daemon.get("run_id"):
                    entry = control.run(int(daemon["run_id"]))
                    if entry is not None:
                        daemon["run_status"] = entry.status
        except ControlError as err:
            daemon = {**(daemon or {}), "control_error": str(err)}
    return {"daemon": daemon, "status": read_status(config.status_file), "nodes": nodes}


def run(args: argparse.Namespace) -> int:
    from server.federation_config import FederationConfigError, load_federation_config
    from server.status import format_status

    try:
        config = load_federation_config(args.config)
    except FederationConfigError as err:
        raise UserError(str(err)) from None
    info = gather(config)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_status(info["status"], info["daemon"], info["nodes"]))
    return 0
