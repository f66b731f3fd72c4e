"""The coordinator's run settings, read from Flower's run config (hyphenated keys).

The same keys appear in ``pyproject.toml`` under ``[tool.flwr.app.config]``, in
``fedsar-sim run`` options and in a deployment's ``federation.toml``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from privacy.run_keys import CENTRAL_KEYS, DP_RUN_KEYS, SECAGG_KEYS
from skeletons.devices import device_name

# Keys other modules read from ``extra``: the privacy options, the model and anonymization
# overrides, the warm start, and the keys fedsar-server writes for its own ServerApp.
EXTRA_KEYS = frozenset({
    *DP_RUN_KEYS, *CENTRAL_KEYS, *SECAGG_KEYS, "model-overrides", "anonymize", "initial-model",
    "checkpoint-dir", "status-file", "resume", "federation",
})


@dataclass
class RunSettings:
    scenario: str = "synthetic"
    strategy: str = "fsar"
    num_server_rounds: int = 10
    local_epochs: int = 1
    personal_epochs: int = 0  # >0: sites fit their personal part first, then train only the shared part
    batch_size: int = 32
    learning_rate: float = 0.05
    lr_schedule: str = "constant"  # of the sites' learning rate over rounds: constant or cosine
    optimizer: str = "sgd"
    keep_optimizer_state: bool = False  # sites carry their optimizer's state (AdamW moments) across rounds
    # sites' training-time augmentation (client.augment): 0 turns a transform off
    augment_rotate: float = 0.0  # largest random rotation per axis, degrees
    augment_axes: str = "xyz"  # axes of that rotation (y is vertical)
    augment_scale: float = 0.0  # largest random rescaling per axis, a fraction
    augment_multiplicity: int = 1  # augmented copies of each sample per step (averaged before DP clipping)
    augment_pool: int = 0  # k > 0: with every block frozen, k augmented views per sequence, computed once
    eval_every: int = 1
    eval_trained: bool = True  # sites also score their model right after local training
    seed: int = 0
    data_root: str = ""
    paths_file: str = ""  # TOML naming where each site's data set lives (fsar-paper)
    out_dir: str = ""
    device: str = "auto"
    model_preset: str = "slim"
    mu: float = 0.01
    mkd: bool = True
    grains: str = "1,2"
    lambda_mg: float = 0.5
    lambda_kd: float = 0.5
    temperature: float = 2.0
    server_momentum: float = 0.0
    share_head: bool = False  # fsar over sites with one label set: the head is averaged too
    personal_norms: bool = False  # fsar: the normalization layers' parameters stay on the sites
    group_heads: bool = False  # sites with one label set average their personal heads (models.label_groups)
    global_mix: float = 1.0  # sites start a round at own + mix * (global - own) of the shared part
    shared_blocks: int = 0  # 0: every block may be shared; k: blocks after k stay on the sites
    frozen_blocks: int = 0  # k: sites do not train the input stage and blocks 1..k (a warm start's features)
    head_start: str = "random"  # or "class-means": sites start their head from their class means (privacy.class_means)
    fraction_train: float = 1.0
    min_sites: int = 0  # 0: every site of the scenario
    timeout_s: float = 3600.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def known_keys(cls) -> set[str]:
        """Every run-config key a run reads."""
        return {f.name.replace("_", "-") for f in fields(cls) if f.name != "extra"} | EXTRA_KEYS

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "RunSettings":
        """Parse hyphenated keys, converting types and naming any bad value. An unknown key
        is refused with the nearest known ones: a mistyped option would otherwise be
        ignored and the run would measure something other than what was asked."""
        settings = cls()
        by_key = {f.name.replace("_", "-"): f for f in fields(cls) if f.name != "extra"}
        for key, value in run_config.items():
            f = by_key.get(key)
            if f is None:
                if key not in EXTRA_KEYS:
                    raise ValueError(unknown_key(key))
                settings.extra[key] = value
                continue
            default = getattr(settings, f.name)
            try:
                setattr(settings, f.name, _convert(value, type(default)))
            except (TypeError, ValueError):
                raise ValueError(f"run config {key!r}: cannot read {value!r} as {type(default).__name__}") from None
        settings.check_ranges()
        return settings

    def check_ranges(self) -> None:
        """Refuse values no run can use, naming the key, before any site is asked to train."""
        bounds = [
            ("num-server-rounds", self.num_server_rounds >= 1, "at least 1"),
            ("local-epochs", self.local_epochs >= 0, "0 or more"),
            ("personal-epochs", self.personal_epochs >= 0, "0 or more"),
            ("batch-size", self.batch_size >= 1, "at least 1"),
            ("learning-rate", self.learning_rate > 0, "positive"),
            ("eval-every", self.eval_every >= 1, "at least 1"),
            ("fraction-train", 0 < self.fraction_train <= 1, "in (0, 1]"),
            ("min-sites", self.min_sites >= 0, "0 or more"),
            ("timeout-s", self.timeout_s > 0, "positive"),
        ]
        bounds.append(("device", _names_a_device(self.device), "auto, cpu, cuda or cuda:N"))
        for key, ok, wanted in bounds:
            if not ok:
                value = getattr(self, key.replace("-", "_"))
                raise ValueError(f"run config {key!r}: {value!r} must be {wanted}")

    def augmentation(self) -> dict[str, Any]:
        """The run-wide ``augment-*`` keys, checked like a site's own recipe."""
        from skeletons.scenario import check_site_recipe

        return check_site_recipe({"augment-rotate": self.augment_rotate, "augment-axes": self.augment_axes,
                                  "augment-scale": self.augment_scale,
                                  "augment-multiplicity": self.augment_multiplicity,
                                  "augment-pool": self.augment_pool}, "run config")

    def to_run_config(self) -> dict[str, Any]:
        out = {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out


def settings_changes(then: Mapping[str, Any], now: Mapping[str, Any],
                     ignore: frozenset[str] | set[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    """``{key: (then, now)}`` for the run-config keys whose values differ, ``ignore``
    left out; ``now`` is compared in the JSON form a results or checkpoint file keeps."""
    import json

    now = json.loads(json.dumps(dict(now)))
    return {k: (then.get(k), now.get(k)) for k in sorted(set(then) | set(now))
            if k not in ignore and then.get(k) != now.get(k)}


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int | None = None) -> str:
    """``learning-rate: 0.05 -> 0.01, ...``: the changes an error message names."""
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit])


def unknown_key(key: str) -> str:
    """The refusal of a key no run reads, with the nearest known keys."""
    close = difflib.get_close_matches(key, sorted(RunSettings.known_keys()), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else " (docs/DESIGN.md, \"Run config\", lists them)"
    return f"run config {key!r} is not a fedsar run-config key{hint}"


def scenario_defaults(scenario: Any) -> dict[str, Any]:
    """A scenario's ``[defaults]``, each key checked: a mistyped one is named with its file
    rather than refused later as one more key of the run config."""
    mistyped = sorted(set(scenario.defaults) - RunSettings.known_keys())
    if mistyped:
        raise ValueError(f"scenario {scenario.source or scenario.name}: [defaults]: {unknown_key(mistyped[0])}")
    return dict(scenario.defaults)


def with_scenario_defaults(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``run_config`` laid over the ``[defaults]`` of the scenario it names.

    A scenario carries the recipe it was measured with (``hetero-datasets``: AdamW, 8
    rounds, grain 1). ``fedsar-sim`` lays its options over them, and the coordinator does
    the same (``fedsar-server``, ``flwr run``), so a scenario trains the same way wherever
    its run starts; a key the run sets itself always wins."""
    from skeletons.scenario import load_scenario

    scenario = load_scenario(str(run_config.get("scenario", RunSettings.scenario)))
    return {**scenario_defaults(scenario), **run_config}


def _names_a_device(spec: str) -> bool:
    """Whether ``spec`` is a device name the sites accept (present on this machine or not:
    the coordinator's machine need not be a site's)."""
    try:
        device_name(spec)
    except ValueError:
        return False
    return True


def _convert(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        return bool(value)
    return kind(value)
