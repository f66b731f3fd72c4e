"""Scenarios: which data each site of a federation holds, as plain data.

A scenario is a TOML file (built-in ones live in ``skeletons/scenarios/``) that lists
sites, each described by a :class:`SiteSpec`: the data set it reads, which part of it
(metadata filter, partition), how it splits into train and test, and the resources it
gets in a simulation. The coordinator, the sites and the simulator all read the same
specs, which is why this module sits in the data layer and depends on nothing above it.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skeletons.datasets import DATASET_NAMES

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
log = logging.getLogger(__name__)

# A site's own training choices that leave the model's parameters as they are, so sites
# with different cameras can augment and normalize differently inside one federation.
# The run config sets them for every site (the augment-* keys; input-range is the model
# config's input_range); a site's value wins.
SITE_RECIPE_KEYS: dict[str, type] = {
    "augment-rotate": float, "augment-axes": str, "augment-scale": float, "augment-multiplicity": int,
    "augment-pool": int, "input-range": bool,
}

REAL_DATASETS = {"nw-ucla", "msr-action3d", "kinder-gator", "ntu", "pyskl", "ctrgcn-npz", "pku-mmd", "uestc"}


class ScenarioError(ValueError):
    """A scenario file or site spec is malformed; the message names the file and field."""


@dataclass
class SiteSpec:
    """Everything a site needs to find and split its own data."""

    name: str
    dataset: str
    folder: str | None = None  # data set folder below the data root; defaults to `dataset`
    options: dict[str, Any] = field(default_factory=dict)  # passed to load_dataset
    select: dict[str, Any] = field(default_factory=dict)  # metadata filter: key -> value or list
    partition: dict[str, Any] | None = None  # {"scheme", "num_sites", "index", ...}
    split: dict[str, Any] = field(default_factory=lambda: {"test_fraction": 0.3, "by": "sample"})
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    anonymize: Any = None  # see privacy.site_anonymization: false, a method, or a table
    recipe: dict[str, Any] = field(default_factory=dict)  # SITE_RECIPE_KEYS -> value

    @property
    def needs_data_root(self) -> bool:
        """Real data found below --data-root (an absolute ``folder`` needs no root)."""
        return self.dataset in REAL_DATASETS and not (self.folder and Path(self.folder).is_absolute())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def data_json(self) -> str:
        """The fields that decide the site's raw arrays: everything but its anonymization and recipe."""
        return json.dumps({k: v for k, v in asdict(self).items() if k not in ("anonymize", "recipe")}, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "site") -> "SiteSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ScenarioError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for required in ("name", "dataset"):
            if required not in raw:
                raise ScenarioError(f"{where}: missing field {required!r}")
        if raw["dataset"] not in DATASET_NAMES:  # caught here, not by every process of the site in every round
            raise ScenarioError(f"{where}: dataset {raw['dataset']!r} is unknown; known: {', '.join(DATASET_NAMES)}")
        if raw.get("anonymize") is not None:
            from privacy.site_anonymization import SiteAnonymization

            try:
                SiteAnonymization.parse(raw["anonymize"], f"{where}: anonymize")
            except ValueError as err:
                raise ScenarioError(str(err)) from None
        check_site_recipe(raw.get("recipe", {}), f"{where}: recipe")
        return cls(**raw)


def recipe_augments(recipe: dict[str, Any]) -> bool:
    """Whether a recipe of run-config keys (the run's, a site's own, or both laid over each
    other) transforms its training sequences; ``client.frozen_trunk.augments`` asks the
    same of a built ``TrainConfig``."""
    return bool(recipe.get("augment-rotate") or recipe.get("augment-scale"))


def site_copies(run_recipe: dict[str, Any], site_recipe: dict[str, Any]) -> int:
    """Augmented copies of each sample a site trains on per step: its own
    ``augment-multiplicity``, else the run's where the site augments, else one. A run-wide
    value is meant for the sites that augment: copies of a sequence nothing transforms
    would all be the same, and would only cost time."""
    if "augment-multiplicity" in site_recipe:
        return int(site_recipe["augment-multiplicity"])
    if recipe_augments({**run_recipe, **site_recipe}):
        return int(run_recipe.get("augment-multiplicity", 1))
    return 1


def check_copies_augmented(run_recipe: dict[str, Any], site_recipe: dict[str, Any], where: str) -> None:
    """A site may only ask for several augmented copies of each sample (its own
    ``augment-multiplicity``) when something augments them."""
    copies = site_recipe.get("augment-multiplicity", 1)
    if copies > 1 and not recipe_augments({**run_recipe, **site_recipe}):
        raise ScenarioError(f"{where}: augment-multiplicity = {copies!r} needs augment-rotate or augment-scale: "
                            "without an augmentation every copy is the same")


def check_site_recipe(recipe: Any, where: str) -> dict[str, Any]:
    """``recipe`` as a table of known keys with values of the right type, or a ScenarioError."""
    if not isinstance(recipe, dict):
        raise ScenarioError(f"{where}: expected a table of {', '.join(SITE_RECIPE_KEYS)}, got {recipe!r}")
    for key, value in recipe.items():
        kind = SITE_RECIPE_KEYS.get(key)
        if kind is None:
            raise ScenarioError(f"{where}: unknown key {key!r}; known: {', '.join(SITE_RECIPE_KEYS)}")
        if kind is bool or kind is str:
            ok = isinstance(value, kind)
        else:
            ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not ok:
            raise ScenarioError(f"{where}: {key} = {value!r} is not a {kind.__name__}")
    if not 0 <= recipe.get("augment-rotate", 0) <= 180:
        raise ScenarioError(f"{where}: augment-rotate = {recipe['augment-rotate']!r}: degrees in [0, 180]")
    if not 0 <= recipe.get("augment-scale", 0) < 1:
        raise ScenarioError(f"{where}: augment-scale = {recipe['augment-scale']!r}: a fraction in [0, 1)")
    if recipe.get("augment-multiplicity", 1) < 1:
        raise ScenarioError(f"{where}: augment-multiplicity = {recipe['augment-multiplicity']!r}: copies per sample, >= 1")
    if recipe.get("augment-pool", 0) < 0:
        raise ScenarioError(f"{where}: augment-pool = {recipe['augment-pool']!r}: augmented views per sequence, "
                            ">= 0 (0: a fresh transform at every step)")
    axes = recipe.get("augment-axes", "xyz")
    if not axes or set(axes) - set("xyz"):
        raise ScenarioError(f"{where}: augment-axes = {axes!r}: letters of 'xyz'")
    return recipe


@dataclass
class Scenario:
    """A named federation: its sites, common layout, input size and run defaults."""

    name: str
    sites: list[SiteSpec]
    layout: str = "kinect-v1"
    num_frames: int = 52
    num_persons: int = 1
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    defaults: dict[str, Any] = field(default_factory=dict)  # run-config defaults
    shared_labels: bool | None = None  # None: inferred from the sites' data sets
    num_classes: int | None = None  # classes of a shared head; lets a coordinator without data start
    source: str = ""

    @property
    def needs_data_root(self) -> bool:
        return any(s.needs_data_root for s in self.sites)

    @property
    def shared_label_set(self) -> bool:
        """True when every site reads the same data set with the same classes (one head fits all)."""
        if self.shared_labels is not None:
            return self.shared_labels
        keys = {(s.dataset, s.options.get("num_classes")) for s in self.sites}
        return len(keys) == 1

    def site_specs_json(self) -> str:
        return json.dumps([json.loads(s.to_json()) for s in self.sites])


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read a built-in scenario by name, or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ScenarioError(
                f"unknown scenario {str(name_or_path)!r}; built in: {', '.join(builtin_scenarios())}"
                " (or give the path of a .toml file)"
            )
    if not path.is_file():
        raise ScenarioError(f"scenario file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from err
    return scenario_from_dict(raw, str(path))


def scenario_from_dict(raw: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Build a scenario; ``[partition]`` expands one data set into ``num_sites`` site specs
    and each ``[[site_groups]]`` entry into one site per value it lists."""
    raw = dict(raw)
    sites_raw = [(site, f"{source}: sites[{i}]") for i, site in enumerate(raw.pop("sites", []))]
    for i, group in enumerate(raw.pop("site_groups", [])):
        where = f"{source}: site_groups[{i}]"
        sites_raw += [(site, f"{where} ({site.get('name')})") for site in _expand_site_group(group, where)]
    partition = raw.pop("partition", None)
    if partition is not None:
        sites_raw += [(site, f"{source}: [partition]") for site in _expand_partition(partition, source)]
    if not sites_raw:
        raise ScenarioError(f"{source}: no sites (give [[sites]], [[site_groups]] or [partition])")
    sites = [SiteSpec.from_dict(site, where) for site, where in sites_raw]
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}: site names repeat: {names}")
    known = set(Scenario.__dataclass_fields__) - {"sites", "source"}
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
    if "name" not in raw:
        raw["name"] = Path(source).stem
    return Scenario(sites=sites, source=source, **raw)


_WARNED: set[tuple[str, str, tuple[str, ...]]] = set()  # skipped-site notices already given in this process


def apply_paths(scenario: Scenario, paths_file: str | Path) -> Scenario:
    """Point the scenario's sites at data sets a paths file names; drop the sites it lacks.

    The paths file is TOML with one table per site name: ``path`` (file or folder),
    ``format`` (a ``load_dataset`` name such as ``ntu``, ``pyskl``, ``ctrgcn-npz``,
    ``pku-mmd``, ``uestc``) and optional ``options``. At least two sites must remain.
    """
    path = Path(paths_file)
    if not path.is_file():
        raise ScenarioError(f"paths file {path} does not exist")
    try:
        entries = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from err
    unknown = set(entries) - {s.name for s in scenario.sites}
    if unknown:
        raise ScenarioError(f"{path}: no site named {', '.join(sorted(unknown))} in scenario {scenario.name!r}")
    sites, missing = [], []
    for site in scenario.sites:
        entry = entries.get(site.name)
        if entry is None:
            missing.append(site.name)
            continue
        if not isinstance(entry, dict):
            raise ScenarioError(f"{path}: [{site.name}] must be a table with path, format and options")
        extra = set(entry) - {"path", "format", "options"}
        if extra:
            raise ScenarioError(f"{path}: [{site.name}] has unknown field(s) {', '.join(sorted(extra))}; "
                                "known: path, format, options")
        for key in ("path", "format"):
            if key not in entry:
                raise ScenarioError(f"{path}: [{site.name}] is missing {key!r}")
        if entry["format"] not in DATASET_NAMES:
            raise ScenarioError(f"{path}: [{site.name}] format {entry['format']!r} is unknown; "
                                f"known: {', '.join(DATASET_NAMES)}")
        data_path = Path(str(entry["path"])).expanduser()
        if not data_path.exists():
            raise ScenarioError(f"{path}: [{site.name}] path {data_path} does not exist")
        options = {**site.options, **dict(entry.get("options", {}))}
        sites.append(SiteSpec(**{**asdict(site), "dataset": str(entry["format"]), "folder": str(data_path.resolve()),
                                 "options": options}))
    if len(sites) < 2:
        raise ScenarioError(
            f"scenario {scenario.name!r} needs at least two data sets; {path} names "
            f"{', '.join(s.name for s in sites) or 'none'}; missing: {', '.join(missing)}"
        )
    note = f"; missing (skipped): {', '.join(missing)}" if missing else ""
    warning = (str(path.resolve()), scenario.name, tuple(missing))
    if missing and warning not in _WARNED:  # a run resolves its scenario several times: said once
        _WARNED.add(warning)
        log.warning("%s names no data set for site(s) %s of scenario %r: they are skipped",
                    path, ", ".join(missing), scenario.name)
    return Scenario(**{**asdict(scenario), "sites": sites, "description": scenario.description + note})


def resolve_scenario(name_or_path: str | Path, paths_file: str | Path | None = None) -> Scenario:
    """The scenario a run uses: loaded, then pointed at the paths file's data sets if given."""
    scenario = load_scenario(name_or_path)
    return apply_paths(scenario, paths_file) if paths_file else scenario


def scenario_for_command(parser: Any, name: str, data_root: str | None) -> Scenario:
    """The scenario a benchmark command names, or ``parser.error`` (argparse's usage error)
    naming the file or field, or the missing ``--data-root`` of a scenario on real data."""
    try:
        scenario = resolve_scenario(name)
    except ScenarioError as err:
        parser.error(str(err))
    if scenario.needs_data_root and not data_root:
        parser.error(f"scenario {scenario.name!r} reads real data sets: give --data-root DIR")
    return scenario


def _expand_partition(partition: dict[str, Any], source: str) -> list[dict[str, Any]]:
    part = dict(partition)
    try:
        dataset = part.pop("dataset")
        scheme = part["scheme"]
        num_sites = int(part["num_sites"])
    except KeyError as err:
        raise ScenarioError(f"{source}: [partition] is missing field {err.args[0]!r}") from None
    site_fields = {k: part.pop(k) for k in ("folder", "options", "select", "split", "num_cpus", "num_gpus", "anonymize", "recipe") if k in part}
    prefix = part.pop("site_prefix", f"{scheme}")
    return [
        {"name": f"{prefix}-{i}", "dataset": dataset, "partition": {**part, "index": i}, **site_fields}
        for i in range(num_sites)
    ]


def _expand_site_group(group: Any, where: str) -> list[dict[str, Any]]:
    """One site table per value of the group's ``each = { KEY = [values] }``.

    Every other field is a site table in which the text ``{KEY}`` (in the name, and in any
    string inside ``select``, ``split`` and the rest) is replaced by the value, so that
    sixteen sites that differ only by a participant's code are written once.
    """
    if not isinstance(group, dict):
        raise ScenarioError(f"{where}: expected a table, got {group!r}")
    template = dict(group)
    each = template.pop("each", None)
    if not isinstance(each, dict) or len(each) != 1:
        raise ScenarioError(f"{where}: 'each' must be a table with one key and a list of values, "
                            f"e.g. each = {{ subject = [\"103\", \"106\"] }}; got {each!r}")
    (key, values), = each.items()
    if not isinstance(values, list) or not values:
        raise ScenarioError(f"{where}: each.{key} must be a non-empty list, got {values!r}")
    placeholder = "{" + key + "}"
    if placeholder not in str(template.get("name", "")):
        raise ScenarioError(f"{where}: name {template.get('name')!r} must contain {placeholder} "
                            "so that the sites' names differ")
    if placeholder not in json.dumps({k: v for k, v in template.items() if k != "name"}):
        raise ScenarioError(f"{where}: {placeholder} appears only in the name, so every site would hold the same "
                            "data; use it where the sites differ, e.g. split = { train = { "
                            f"{key} = \"{placeholder}\" }} }}")

    def fill(value: Any, by: Any) -> Any:
        if isinstance(value, str):  # a whole-field placeholder keeps the value's own type
            return by if value == placeholder else value.replace(placeholder, str(by))
        if isinstance(value, list):
            return [fill(v, by) for v in value]
        if isinstance(value, dict):
            return {k: fill(v, by) for k, v in value.items()}
        return value

    return [fill(template, value) for value in values]
