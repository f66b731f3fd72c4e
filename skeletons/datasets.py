"""Load any supported data set by name, optionally in another joint layout.

Loaders are named by ``"module:function"`` strings in :data:`LOADERS` and imported only
when used, so a new format is one line here and a module beside the others.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from skeletons.layouts import Layout, get_layout, joint_mapping, map_layout
from skeletons.sample import SkeletonDataset, SkeletonSample

LOADERS: dict[str, str] = {
    "nw-ucla": "skeletons.read_nwucla:load_nwucla",
    "msr-action3d": "skeletons.read_msr:load_msr_action3d",
    "kinder-gator": "skeletons.read_kindergator:load_kindergator",
    "ntu": "skeletons.read_ntu:load_ntu",
    "npz": "skeletons.read_npz:load_npz",
    "pyskl": "skeletons.read_pyskl:load_pyskl",
    "ctrgcn-npz": "skeletons.read_ctrgcn_npz:load_ctrgcn_npz",
    "pku-mmd": "skeletons.read_pkummd:load_pkummd",
    "uestc": "skeletons.read_uestc:load_uestc",
}

# Folder names under a ``--data-root`` at which each data set is looked for, first match wins.
FOLDERS: dict[str, tuple[str, ...]] = {
    "nw-ucla": ("nw-ucla", "NW-UCLA", "nwucla"),
    "msr-action3d": ("msr-action3d", "MSRAction3D", "msr"),
    "kinder-gator": ("kinder-gator", "KinderGator", "kindergator"),
    "ntu": ("ntu", "nturgb+d_skeletons", "ntu120"),
}

DATASET_NAMES = tuple(LOADERS) + ("synthetic",)


def loader(name: str) -> Callable[..., SkeletonDataset]:
    """The loading function registered for ``name``."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")
    module_name, func_name = LOADERS[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> SkeletonDataset:
    """Load data set ``name`` from its own folder ``root`` (e.g. ``.../data/nw-ucla``).

    ``layout="kinect-v1"`` (or a :class:`Layout`) maps the samples onto another layout by
    joint name. Other options go to the loader, e.g. ``on_error="skip"`` for the file
    readers; for ``synthetic`` they go to ``skeletons.synthetic.generate_synthetic``.
    """
    if name == "synthetic":  # generated directly in the requested layout
        from skeletons.synthetic import generate_synthetic

        try:
            return generate_synthetic(**options)
        except TypeError as err:  # a misspelt option: the generator names it
            raise ValueError(f"synthetic data set options: {err}") from None
    layout = options.pop("layout", None)
    load = loader(name)
    if root is None:
        raise ValueError(f"data set {name!r} needs root, the folder (or file) holding it")
    dataset = load(Path(root).expanduser(), **options)
    return dataset if layout is None else in_layout(dataset, layout)


def in_layout(dataset: SkeletonDataset, layout: str | Layout) -> SkeletonDataset:
    """The same samples with joints re-ordered (and dropped) to match ``layout`` by name."""
    target = get_layout(layout) if isinstance(layout, str) else layout
    if target == dataset.layout:
        return dataset
    joint_mapping(dataset.layout, target)  # fails early, naming the missing joints
    samples = [
        SkeletonSample(map_layout(s.joints, dataset.layout, target), s.label, dict(s.meta))
        for s in dataset.samples
    ]
    return SkeletonDataset(dataset.name, target, list(dataset.classes), samples,
                           list(dataset.skipped))


def dataset_folder(data_root: str | Path, name: str) -> Path:
    """Folder of data set ``name`` under a parent ``data_root`` holding several data sets."""
    data_root = Path(data_root).expanduser()
    if name not in FOLDERS:
        raise ValueError(f"no folder convention for data set {name!r}; known: "
                         f"{', '.join(FOLDERS)}")
    if not data_root.is_dir():
        raise FileNotFoundError(f"data root {data_root} is not a folder")
    for candidate in FOLDERS[name]:
        if (data_root / candidate).is_dir():
            return data_root / candidate
    present = sorted(p.name for p in data_root.iterdir() if p.is_dir())
    raise FileNotFoundError(
        f"data set {name!r} not found under {data_root}: no folder named "
        f"{' or '.join(FOLDERS[name])}; present: {', '.join(present) or 'nothing'}"
    )


def find_datasets(data_root: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Data sets found under ``data_root`` (name -> folder), and the names not found."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in FOLDERS:
        try:
            found[name] = dataset_folder(data_root, name)
        except FileNotFoundError:
            missing.append(name)
    return found, missing
