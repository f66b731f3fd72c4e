"""A deployed site's own configuration file (``site.toml``).

A site describes itself: its name, where the coordinator is and which CA vouches for
it, its private key, where its data lives and in which format, its privacy settings,
and where it keeps what must survive restarts (personal parameters, the privacy
ledger, metrics). The coordinator never sees this file; the SuperNode passes its path
to the ClientApp as the node config ``site-config``.

Relative paths are relative to the folder of the ``site.toml`` itself, so a site's
folder can be moved as a whole.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skeletons.scenario import SITE_RECIPE_KEYS, ScenarioError, SiteSpec, check_site_recipe

if TYPE_CHECKING:
    from privacy.site_anonymization import SiteAnonymization

EXECUTORS = ("warm", "subprocess")
KNOWN = {
    "site": {"name", "state_dir"},
    "coordinator": {"address", "ca_certificate"},
    "keys": {"private_key"},
    "data": {"dataset", "path", "layout", "options", "select", "split", "partition"},
    "privacy": {"epsilon", "delta", "max_grad_norm", "noise_multiplier", "max_noise_multiplier", "ledger", "anonymize",
                "anonymizer_model", "keep_ratio", "mix"},
    "node": {"executor", "runtime_port", "metrics_port", "max_wait_s"},
    "training": set(SITE_RECIPE_KEYS),
}
DATASETS_WITHOUT_FILES = {"synthetic"}


class SiteConfigError(ValueError):
    """The site configuration is malformed or points at something unusable; names file and field."""


@dataclass
class PrivacySettings:
    """The site's differential-privacy budget and where its ledger lives."""

    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float | None = None
    noise_multiplier: float | None = None
    max_noise_multiplier: float | None = None
    ledger: Path | None = None


@dataclass
class SiteConfig:
    """Everything ``fedsar-client`` and the site's ClientApp read from ``site.toml``."""

    source: Path
    name: str
    state_dir: Path
    address: str
    ca_certificate: Path
    private_key: Path
    spec: SiteSpec
    data_path: Path | None
    data_root: str | None
    layout: str
    privacy: PrivacySettings
    executor: str = "warm"
    runtime_port: int = 0
    metrics_port: int = 0
    max_wait_s: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def personal_dir(self) -> Path:
        return self.state_dir / "personal"

    @property
    def metrics_file(self) -> Path:
        return self.state_dir / "metrics.json"

    @property
    def ledger_path(self) -> Path:
        return self.privacy.ledger or self.state_dir / "privacy-ledger.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def _table(raw: dict[str, Any], name: str, source: Path, required: bool = True) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        if required:
            raise SiteConfigError(f"{source}: missing section [{name}]")
        return {}
    if not isinstance(value, dict):
        raise SiteConfigError(f"{source}: [{name}] must be a table")
    unknown = set(value) - KNOWN[name]
    if unknown:
        raise SiteConfigError(
            f"{source}: [{name}] has unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN[name]))}"
        )
    return value


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], source: Path, section: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise SiteConfigError(f"{source}: [{section}] is missing {key!r}")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SiteConfigError(f"{source}: [{section}] {key} = {value!r} must be a {names}")
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and check ``site.toml``; every error names the file and the field."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise SiteConfigError(f"site config {source} does not exist")
    try:
        raw = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SiteConfigError(f"{source}: not valid TOML: {err}") from None
    except OSError as err:
        raise SiteConfigError(f"site config {source} cannot be read: {err.strerror}") from None
    unknown = set(raw) - set(KNOWN)
    if unknown:
        raise SiteConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(KNOWN)}")
    base = source.parent

    site = _table(raw, "site", source)
    name = _get(site, "name", str, source, "site")
    from privacy.keys import KeyFileError, check_site_name

    try:
        check_site_name(name)
    except KeyFileError as err:
        raise SiteConfigError(f"{source}: [site] {err}") from None
    state_dir = _path(base, _get(site, "state_dir", str, source, "site", f"state/{name}"))

    coordinator = _table(raw, "coordinator", source)
    address = _get(coordinator, "address", str, source, "coordinator")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SiteConfigError(f"{source}: [coordinator] address = {address!r} must be host:port")
    ca = _path(base, _get(coordinator, "ca_certificate", str, source, "coordinator"))

    keys = _table(raw, "keys", source)
    private_key = _path(base, _get(keys, "private_key", str, source, "keys"))

    data = _table(raw, "data", source)
    dataset = _get(data, "dataset", str, source, "data")
    data_path = None
    data_root = None
    folder = None
    if "path" in data:
        data_path = _path(base, _get(data, "path", str, source, "data"))
        data_root, folder = str(data_path.parent), data_path.name
    elif dataset not in DATASETS_WITHOUT_FILES:
        raise SiteConfigError(f"{source}: [data] dataset {dataset!r} reads files: give path = \"<its folder>\"")
    layout = _get(data, "layout", str, source, "data", "kinect-v1")
    from skeletons.layouts import get_layout

    try:
        get_layout(layout)
    except (KeyError, ValueError) as err:
        raise SiteConfigError(f"{source}: [data] layout {layout!r}: {err}") from None
    priv = _table(raw, "privacy", source, required=False)
    anonymization = _anonymization(priv, base, source)
    try:  # the site's own augmentation and input scaling: they win over the run config's
        recipe = check_site_recipe(dict(_table(raw, "training", source, required=False)), f"{source}: [training]")
    except ScenarioError as err:
        raise SiteConfigError(str(err)) from None
    spec = SiteSpec(
        name=name,
        dataset=dataset,
        folder=folder,
        options=dict(_get(data, "options", dict, source, "data", {})),
        select=dict(_get(data, "select", dict, source, "data", {})),
        partition=_get(data, "partition", dict, source, "data", None),
        split=dict(_get(data, "split", dict, source, "data", {"test_fraction": 0.3, "by": "sample"})),
        anonymize=anonymization.to_dict() if anonymization.enabled else None,
        recipe=recipe,
    )

    privacy = PrivacySettings(
        epsilon=_get(priv, "epsilon", float, source, "privacy", None),
        delta=_get(priv, "delta", float, source, "privacy", 1e-5),
        max_grad_norm=_get(priv, "max_grad_norm", float, source, "privacy", None),
        noise_multiplier=_get(priv, "noise_multiplier", float, source, "privacy", None),
        max_noise_multiplier=_get(priv, "max_noise_multiplier", float, source, "privacy", None),
        ledger=_path(state_dir, priv["ledger"]) if "ledger" in priv else None,
    )
    if not 0 < privacy.delta < 1:
        raise SiteConfigError(f"{source}: [privacy] delta = {privacy.delta} must be in (0, 1)")
    for field_name in ("epsilon", "max_grad_norm", "noise_multiplier", "max_noise_multiplier"):
        value = getattr(privacy, field_name)
        if value is not None and not value > 0:  # NaN too
            raise SiteConfigError(f"{source}: [privacy] {field_name} = {value} must be positive")

    node = _table(raw, "node", source, required=False)
    executor = _get(node, "executor", str, source, "node", "warm")
    if executor not in EXECUTORS:
        raise SiteConfigError(f"{source}: [node] executor = {executor!r}; choose from {', '.join(EXECUTORS)}")
    ports = {}
    for key in ("runtime_port", "metrics_port"):
        ports[key] = _get(node, key, int, source, "node", 0)
        if not 0 <= ports[key] < 65536:
            raise SiteConfigError(f"{source}: [node] {key} = {ports[key]} is not a port number (0: automatic/off)")
    return SiteConfig(
        source=source, name=name, state_dir=state_dir, address=address, ca_certificate=ca,
        private_key=private_key, spec=spec, data_path=data_path, data_root=data_root, layout=layout,
        privacy=privacy, executor=executor, runtime_port=ports["runtime_port"],
        metrics_port=ports["metrics_port"], max_wait_s=_get(node, "max_wait_s", float, source, "node", 0.0), raw=raw,
    )


def _anonymization(priv: dict[str, Any], base: Path, source: Path) -> "SiteAnonymization":
    """``[privacy] anonymize`` (true/false or none/bones/learned) with ``anonymizer_model``,
    ``keep_ratio`` and ``mix``; the model path is relative to the site.toml's folder."""
    from privacy.site_anonymization import SiteAnonymization

    method = _get(priv, "anonymize", (bool, str), source, "privacy", False)
    table: dict[str, Any] = {"method": {True: "bones", False: "none"}.get(method, method)}
    if "anonymizer_model" in priv:
        table["model"] = str(_path(base, _get(priv, "anonymizer_model", str, source, "privacy")))
    for key in ("keep_ratio", "mix"):
        if key in priv:
            table[key] = _get(priv, key, float, source, "privacy")
    try:
        return SiteAnonymization.parse(table, f"{source}: [privacy] anonymize")
    except ValueError as err:
        raise SiteConfigError(str(err)) from None


def check_site_ready(site: SiteConfig, load_data: bool = True) -> None:
    """Refuse to start a site whose keys, certificate, data or state folder are unusable.

    All problems are collected and reported together, each naming the file.
    """
    from privacy.keys import KeyFileError, read_certificate, read_site_private_key

    problems: list[str] = []
    try:
        read_site_private_key(site.private_key)
        mode = site.private_key.stat().st_mode & 0o077
        if mode:
            problems.append(f"site private key {site.private_key} is readable by others (mode {oct(site.private_key.stat().st_mode & 0o777)}); run chmod 600")
    except KeyFileError as err:
        problems.append(str(err))
    try:
        read_certificate(site.ca_certificate, "CA certificate")
    except KeyFileError as err:
        problems.append(str(err))
    if site.data_path is not None:
        if not site.data_path.exists():
            problems.append(f"data folder {site.data_path} does not exist ([data] path in {site.source})")
        elif not os.access(site.data_path, os.R_OK | (os.X_OK if site.data_path.is_dir() else 0)):
            problems.append(f"data folder {site.data_path} cannot be read by this user")
    try:
        site.state_dir.mkdir(parents=True, exist_ok=True)
        probe = site.state_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        problems.append(f"state folder {site.state_dir} is not writable: {err.strerror}")
    model = (site.spec.anonymize or {}).get("model")
    if model:
        from privacy.anonymizer import load_anonymizer

        try:
            anonymizer = load_anonymizer(model)
        except (OSError, ValueError) as err:
            problems.append(f"anonymizer model ([privacy] anonymizer_model in {site.source}): {err}")
        else:
            if anonymizer.layout.name != site.layout:
                problems.append(f"anonymizer model {model} is for layout {anonymizer.layout.name!r}, "
                                f"the site's data is {site.layout!r} ([data] layout in {site.source})")
    if load_data and not problems:
        from skeletons.site_data import site_dataset

        try:
            dataset = site_dataset(site.spec, site.data_root, site.layout)
        except Exception as err:  # noqa: BLE001 - any reader error means the data is unusable
            problems.append(f"data of site {site.name!r} ({site.spec.dataset} at {site.data_path or 'generated'}) cannot be loaded: {err}")
        else:
            if len(dataset.samples) == 0:
                problems.append(f"data of site {site.name!r} at {site.data_path}: no samples")
    if problems:
        raise SiteConfigError(f"site {site.name!r} ({site.source}) cannot start:\n  - " + "\n  - ".join(problems))
