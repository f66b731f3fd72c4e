"""A site's anonymization switch: the arrays its trainer sees.

A site that turns anonymization on trains and is evaluated on protected sequences only:
the bone normalizer (``bones``) or a learned anonymizer (``learned``), applied to its
training and test splits alike, since a deployed recognizer is fed recordings protected
the same way. A learned anonymizer comes from a saved model file, or is fitted on the
site's own training split the first time it is needed (seeded, so every process of a
simulation fits the same one) and, where the site has a state folder, saved there and
reused after restarts (delete it to refit).

Settings (a site's ``anonymize`` in a scenario file, ``[privacy]`` in ``site.toml``, or
``anonymize`` in the run config of a simulation): ``method`` (``none``, ``bones``,
``learned``), ``model`` (path of a saved learned anonymizer), ``keep_ratio``, ``mix``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skeletons.site_data import SiteArrays

log = logging.getLogger(__name__)

METHODS = ("none", "bones", "learned")  # also privacy.anonymizer's AnonymizationConfig methods
FIELDS = ("method", "model", "keep_ratio", "mix")
FITTED_MODEL = "anonymizer.json"  # in a site's state folder


@dataclass(frozen=True)
class SiteAnonymization:
    """What a site does to its arrays before its trainer sees them."""

    method: str = "none"
    model: str | None = None  # saved learned anonymizer; None: fit one on the training split
    keep_ratio: float = 1.0
    mix: float | None = None  # prototype share; None: the model's own

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def parse(cls, raw: Any, where: str) -> "SiteAnonymization":
        """From ``false``/``true`` (none/bones), a method name, or a table; errors name ``where``."""
        if raw is None or raw is False:
            return cls()
        if raw is True:
            return cls(method="bones")
        if isinstance(raw, str):
            raw = {"method": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected true/false, a method ({', '.join(METHODS)}) or a table, got {raw!r}")
        unknown = set(raw) - set(FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(FIELDS)}")
        method = raw.get("method", "bones")
        if method not in METHODS:
            raise ValueError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}")
        model = raw.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"{where}: model must be the path of a saved anonymizer, got {model!r}")
        if model is not None and method != "learned":
            raise ValueError(f"{where}: model is given but method is {method!r}, not 'learned'")
        try:
            keep = float(raw.get("keep_ratio", 1.0))
            mix = None if raw.get("mix") is None else float(raw["mix"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: keep_ratio and mix must be numbers") from None
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"{where}: keep_ratio = {keep} must be in (0, 1]")
        if mix is not None and not 0.0 <= mix <= 1.0:
            raise ValueError(f"{where}: mix = {mix} must be in [0, 1]")
        if method == "bones" and (keep != 1.0 or mix is not None):
            raise ValueError(f"{where}: keep_ratio and mix belong to the learned anonymizer, not to 'bones'")
        return cls(method=method, model=model, keep_ratio=keep, mix=mix)


# Protected arrays of a few sites per process, and every learned anonymizer fitted here
# (a fit costs about a minute on a CPU; a model is a few megabytes).
_ARRAYS: OrderedDict[str, "SiteArrays"] = OrderedDict()
_ARRAY_SITES = 4
_MODELS: dict[str, Any] = {}


def protect_site(arrays: "SiteArrays", setting: SiteAnonymization, layout: str, seed: int = 0,
                 state_dir: Path | None = None, key: str = "") -> "SiteArrays":
    """``arrays`` with both splits anonymized by ``setting`` (the same object when off).

    ``key`` names the raw arrays (their load parameters): results are kept per key, so a
    site asked again in the same process is neither refitted nor re-anonymized."""
    if not setting.enabled:
        return arrays
    data_key = key or arrays.name
    key = repr((data_key, setting, layout, seed, str(state_dir)))
    if key in _ARRAYS:
        _ARRAYS.move_to_end(key)
        return _ARRAYS[key]
    from privacy.bone_normalize import normalize_bones
    from skeletons.layouts import get_layout

    lay = get_layout(layout)
    if setting.method == "bones":
        def apply(x):
            return normalize_bones(x, lay)
    else:
        fit_key = repr((data_key, setting.model, layout, seed, str(state_dir)))  # keep ratio and mix: deployment knobs
        if fit_key not in _MODELS:
            _MODELS[fit_key] = site_model(arrays, lay, setting, seed, state_dir)
        model = _MODELS[fit_key]

        def apply(x):
            return model.anonymize(x, setting.keep_ratio, mix=setting.mix)
    protected = replace(arrays, x_train=apply(arrays.x_train), x_test=apply(arrays.x_test))
    log.info("site %s: trains and tests on %s-anonymized sequences", arrays.name, setting.method)
    _ARRAYS[key] = protected
    while len(_ARRAYS) > _ARRAY_SITES:
        _ARRAYS.popitem(last=False)
    return protected


def site_model(arrays: "SiteArrays", layout, setting: SiteAnonymization, seed: int, state_dir: Path | None):
    """The site's learned anonymizer: its ``model`` file, the one fitted earlier in
    ``state_dir``, or a new one fitted on the training split (saved to ``state_dir`` when
    the site has one; a simulated site refits it, seeded, in every process)."""
    import numpy as np

    from privacy.anonymizer import AnonymizerConfig, fit_anonymizer, load_anonymizer, save_anonymizer

    path = Path(setting.model) if setting.model else (state_dir / FITTED_MODEL if state_dir else None)
    if path is not None and (setting.model or path.is_file()):
        model = load_anonymizer(path)
        if model.layout.name != layout.name:
            raise ValueError(f"{path}: anonymizer for layout {model.layout.name!r}, the site's data is {layout.name!r}")
        return model
    subjects = np.unique(np.asarray(arrays.subjects_train), return_inverse=True)[1]
    log.warning("site %s: fitting its anonymizer on its %d training sequences of %d people; the model "
                "depends on all of them, so DP-SGD's per-sequence guarantee covers the anonymized "
                "sequences, not the raw ones (docs/privacy.md)",
                arrays.name, len(arrays.y_train), int(subjects.max()) + 1)
    model = fit_anonymizer(arrays.x_train, arrays.y_train, subjects, {}, layout, AnonymizerConfig(seed=seed))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_anonymizer(model, path, extra={"site": arrays.name, "fitted_on": "training split",
                                            "sequences": int(len(arrays.y_train))})
    return model
