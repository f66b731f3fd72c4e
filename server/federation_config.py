"""The coordinator's configuration file (``federation.toml``).

It names the federation, where the coordinator keeps its state, how its SuperLink
listens (TLS certificate and key, the CA the sites trust), which sites are enrolled
(their public keys) and the run itself: the ``[run]`` table is the run config of
``server.app:app`` (the same hyphenated keys as ``pyproject.toml`` and ``fedsar-sim``).
Relative paths are relative to the folder of ``federation.toml``.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.settings import RunSettings, with_scenario_defaults

KNOWN = {
    "federation": {"name", "state_dir"},
    "coordinator": {
        "host", "port", "address", "certificate", "private_key", "ca_certificate", "metrics_port",
        "metrics_host", "keep_running", "database", "wait_for_sites_s",
    },
}
# Run-config keys the daemon sets itself.
RESERVED_RUN_KEYS = {"out-dir", "checkpoint-dir", "status-file", "resume", "federation"}


class FederationConfigError(ValueError):
    """``federation.toml`` is malformed; the message names the file and the field."""


@dataclass
class EnrolledSite:
    name: str
    public_key: Path


@dataclass
class FederationConfig:
    """Everything ``fedsar-server`` reads from ``federation.toml``."""

    source: Path
    name: str
    state_dir: Path
    host: str
    port: int
    address: str
    certificate: Path
    private_key: Path
    ca_certificate: Path
    metrics_port: int
    metrics_host: str
    keep_running: bool
    run: dict[str, Any]
    database_mode: str = "memory"
    sites: list[EnrolledSite] = field(default_factory=list)
    wait_for_sites_s: float = 0.0  # before the run starts: how long to wait for every enrolled site

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_dir / "checkpoints"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def daemon_file(self) -> Path:
        return self.state_dir / "daemon.json"

    @property
    def out_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def app_dir(self) -> Path:
        return self.state_dir / "app"

    @property
    def database(self) -> str:
        """The SuperLink's ``--database``: in memory, or a SQLite file in the state folder."""
        return ":flwr-in-memory:" if self.database_mode == "memory" else str(self.state_dir / "superlink.db")

    def settings(self) -> RunSettings:
        return RunSettings.from_run_config(self.run)


def _with_scenario_defaults(run: dict[str, Any]) -> dict[str, Any]:
    """``[run]`` over its scenario's ``[defaults]``, written whole into the run's app so
    that what runs is what the app says. A scenario file that is missing or broken is left
    to the coordinator's start to report (``fedsar-server status`` and ``stop`` load this
    file too and must work without it); a mistyped default is refused here."""
    from skeletons.scenario import ScenarioError

    try:
        merged = with_scenario_defaults(run)
    except ScenarioError:
        return run
    for key, value in merged.items():  # Flower's run config holds scalars only (it flattens tables)
        if key == "model-overrides" and isinstance(value, dict):
            merged[key] = json.dumps(value)  # the JSON text a run config carries
        elif not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{key} = {value!r} from the scenario's [defaults] must be a string, number or boolean "
                             f"in a coordinator's run config")
    return merged


def _path(base: Path, value: str) -> Path:
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _need(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise FederationConfigError(f"{where} is missing {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FederationConfigError(f"{where} {key} = {value!r} must be a {kind.__name__}")
    return value


def _check_keys(table: dict[str, Any], section: str, source: Path) -> None:
    unknown = set(table) - KNOWN[section]
    if unknown:
        raise FederationConfigError(
            f"{source}: [{section}] has unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN[section]))}"
        )


def load_federation_config(path: str | Path) -> FederationConfig:
    """Read and check ``federation.toml``; every error names the file and the field."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise FederationConfigError(f"federation config {source} does not exist")
    try:
        raw = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as err:
        raise FederationConfigError(f"{source}: not valid TOML: {err}") from None
    unknown = set(raw) - {"federation", "coordinator", "run", "sites"}
    if unknown:
        raise FederationConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}")
    base = source.parent

    fed = raw.get("federation", {})
    _check_keys(fed, "federation", source)
    name = _need(fed, "name", str, f"{source}: [federation]")
    state_dir = _path(base, fed.get("state_dir", f"state/{name}"))

    coord = raw.get("coordinator")
    if not isinstance(coord, dict):
        raise FederationConfigError(f"{source}: missing section [coordinator]")
    _check_keys(coord, "coordinator", source)
    where = f"{source}: [coordinator]"
    host = coord.get("host", "127.0.0.1")
    port = _need(coord, "port", int, where)
    if not 0 < port < 65536:
        raise FederationConfigError(f"{where} port = {port} is not a port number")
    address = coord.get("address", f"{'localhost' if host in ('0.0.0.0', '127.0.0.1', '::') else host}:{port}")
    metrics_port = coord.get("metrics_port", 0)
    if not isinstance(metrics_port, int) or not 0 <= metrics_port < 65536:
        raise FederationConfigError(f"{where} metrics_port = {metrics_port!r} is not a port number (0: off)")

    database_mode = coord.get("database", "memory")
    if database_mode not in ("memory", "file"):
        raise FederationConfigError(f"{where} database = {database_mode!r}: choose memory or file")

    wait_for_sites_s = coord.get("wait_for_sites_s", 0.0)
    if isinstance(wait_for_sites_s, bool) or not isinstance(wait_for_sites_s, (int, float)) or wait_for_sites_s < 0:
        raise FederationConfigError(f"{where} wait_for_sites_s = {wait_for_sites_s!r}: seconds, >= 0 (0: do not wait)")

    run = raw.get("run")
    if not isinstance(run, dict):
        raise FederationConfigError(f"{source}: missing section [run] (the run config: scenario, strategy, num-server-rounds, ...)")
    reserved = RESERVED_RUN_KEYS & set(run)
    if reserved:
        raise FederationConfigError(f"{source}: [run] sets {', '.join(sorted(reserved))}, which fedsar-server sets itself")
    for key, value in run.items():
        if not isinstance(value, (str, int, float, bool)):
            raise FederationConfigError(f"{source}: [run] {key} = {value!r} must be a string, number or boolean")
    run = dict(run)
    scenario = str(run.get("scenario", "synthetic"))
    if scenario.endswith(".toml") or "/" in scenario:
        run["scenario"] = str(_path(base, scenario))
    for key in ("data-root", "paths-file", "initial-model"):
        if run.get(key):
            run[key] = str(_path(base, str(run[key])))
    try:
        run = _with_scenario_defaults(run)
        RunSettings.from_run_config(run)
        if run.get("initial-model"):  # a missing warm start fails here, not in the ServerApp
            from server.warm_start import initial_model_file

            initial_model_file(str(run["initial-model"]))
    except ValueError as err:
        raise FederationConfigError(f"{source}: [run] {err}") from None

    sites_raw = raw.get("sites", [])
    if not isinstance(sites_raw, list) or not sites_raw:
        raise FederationConfigError(f"{source}: enrol at least one site with [[sites]] name = ..., public_key = ...")
    sites = []
    for i, entry in enumerate(sites_raw):
        at = f"{source}: sites[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "public_key"}:
            raise FederationConfigError(f"{at}: expected a table with name and public_key only")
        sites.append(EnrolledSite(_need(entry, "name", str, at), _path(base, _need(entry, "public_key", str, at))))
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise FederationConfigError(f"{source}: site names repeat: {names}")

    return FederationConfig(
        source=source, name=name, state_dir=state_dir, host=str(host), port=port, address=str(address),
        certificate=_path(base, _need(coord, "certificate", str, where)),
        private_key=_path(base, _need(coord, "private_key", str, where)),
        ca_certificate=_path(base, _need(coord, "ca_certificate", str, where)),
        metrics_port=metrics_port, metrics_host=str(coord.get("metrics_host", "0.0.0.0")),
        keep_running=bool(coord.get("keep_running", False)), run=run, sites=sites, database_mode=database_mode,
        wait_for_sites_s=float(wait_for_sites_s),
    )
