"""Saving and loading models without pickle: ``.npz`` weights plus a JSON description.

``torch.save`` pickles, and unpickling a file from elsewhere can run code; weights
travel between sites and the coordinator, so they are stored as plain arrays.
Both files are written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from models.config import ModelConfig
from models.network import FSARNet, build_model
from skeletons.layouts import LAYOUTS, Layout

FORMAT = "fedsar-model/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in state.items()}


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write named arrays as an uncompressed ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, **dict(arrays))
    atomic_write_bytes(Path(path), buf.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.npz`` of named arrays (no pickle), naming the file on failure."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz of arrays ({err})") from err


def describe_model(model: FSARNet) -> dict[str, Any]:
    """JSON-ready description from which :func:`model_from_description` rebuilds it."""
    layout = model.layout
    return {
        "format": FORMAT,
        "layout": {
            "name": layout.name,
            "joints": list(layout.joints),
            "bones": [list(b) for b in layout.bone_names],
            "center": layout.center_joint,
        },
        "num_classes": model.num_classes,
        "num_persons": model.num_persons,
        "config": model.config.to_dict(),
    }


def model_from_description(desc: Mapping[str, Any], source: str = "model description") -> FSARNet:
    """Build an (untrained) model from :func:`describe_model`'s output."""
    try:
        if desc.get("format") != FORMAT:
            raise ValueError(f"format is {desc.get('format')!r}, expected {FORMAT!r}")
        lay = desc["layout"]
        known = LAYOUTS.get(lay["name"])
        if known is not None and list(known.joints) == list(lay["joints"]):
            layout = known
        else:
            layout = Layout(
                name=lay["name"], joints=tuple(lay["joints"]),
                bone_names=tuple(tuple(b) for b in lay["bones"]), center_joint=lay["center"],
            )
        config = ModelConfig.from_dict(desc["config"])
        return build_model(layout, int(desc["num_classes"]), int(desc["num_persons"]), config)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid model description ({err!r})") from err


def save_model(model: FSARNet, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``PATH.npz`` (weights) and ``PATH.json`` (layout, classes, config).

    ``path`` may end in ``.npz``, ``.json`` or have no suffix; both files are returned.
    """
    base = Path(path)
    if base.suffix in (".npz", ".json"):
        base = base.with_suffix("")
    weights, meta = base.with_suffix(".npz"), base.with_suffix(".json")
    save_arrays(weights, state_to_numpy(model.state_dict()))
    text = json.dumps(describe_model(model), indent=2) + "\n"
    atomic_write_bytes(meta, text.encode())
    return weights, meta


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> FSARNet:
    """Rebuild a model saved by :func:`save_model`; errors name the file at fault."""
    base = Path(path)
    if base.suffix in (".npz", ".json"):
        base = base.with_suffix("")
    weights, meta = base.with_suffix(".npz"), base.with_suffix(".json")
    try:
        desc = json.loads(meta.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta}: not valid JSON ({err})") from err
    model = model_from_description(desc, str(meta))
    arrays = load_arrays(weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{weights}: weights do not fit the model in {meta.name} "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key, ref in expected.items():
        if tuple(arrays[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"{weights}: {key} has shape {arrays[key].shape}, model expects {tuple(ref.shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(arrays[k]) for k in expected})
    return model.to(map_location)
