"""Turn a :class:`SiteSpec` into the arrays one site trains and tests on.

Used by the site (ClientApp) in simulation and deployment alike, so that a simulated
site and a real one read their data through the same code.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skeletons.sample import SkeletonDataset
from skeletons.scenario import ScenarioError, SiteSpec

log = logging.getLogger(__name__)


@dataclass
class SiteArrays:
    """A site's preprocessed train and test arrays, ``x`` shaped ``[N, 3, T, V, M]``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    subjects_train: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# A few sites' arrays per process: Flower may hand any site to any simulation actor, so
# an unbounded memo could hold every site in every actor (gigabytes at NTU scale).
_MEMO: OrderedDict[str, SiteArrays] = OrderedDict()
MEMO_SITES = int(os.environ.get("FEDSAR_SITE_MEMO", "4"))


def load_site(
    spec: SiteSpec,
    data_root: str | Path | None,
    layout: str,
    num_frames: int,
    num_persons: int = 1,
    seed: int = 0,
) -> SiteArrays:
    """Load, filter, partition, split and preprocess one site's data (memoized per process)."""
    key = json.dumps([spec.data_json(), str(data_root), layout, num_frames, num_persons, seed])
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    arrays = _load_site(spec, data_root, layout, num_frames, num_persons, seed)
    _MEMO[key] = arrays
    while len(_MEMO) > max(MEMO_SITES, 1):
        _MEMO.popitem(last=False)
    return arrays


def site_dataset(spec: SiteSpec, data_root: str | Path | None, layout: str, seed: int = 0) -> SkeletonDataset:
    """The site's whole data set in the common layout, after its metadata filter."""
    from skeletons.cache import cached_dataset
    from skeletons.datasets import in_layout, load_dataset

    root = None
    if spec.folder and Path(spec.folder).is_absolute():
        root = Path(spec.folder)
        if not root.exists():
            raise ScenarioError(f"site {spec.name!r}: data path {root} does not exist")
    elif spec.needs_data_root:
        if data_root is None:
            raise ScenarioError(
                f"site {spec.name!r} reads the real data set {spec.dataset!r}: give --data-root "
                "(the folder that holds nw-ucla/, msr-action3d/, kinder-gator/ ...)"
            )
        root = Path(data_root) / (spec.folder or spec.dataset)
        if not root.is_dir():
            raise ScenarioError(f"site {spec.name!r}: data folder {root} does not exist")
    options = dict(spec.options)
    if spec.dataset == "synthetic":
        options.setdefault("seed", seed)
    if root is None:
        dataset = load_dataset(spec.dataset, None, layout=layout, **options)
    else:  # parsed once, then read from the on-disk cache
        dataset = in_layout(cached_dataset(spec.dataset, root, **options), layout)
    return select(dataset, spec.select, where=f"site {spec.name!r}")


def select(dataset: SkeletonDataset, criteria: dict[str, Any], where: str = "") -> SkeletonDataset:
    """Keep samples whose metadata (or attributes) match every criterion; a list means any of."""
    if not criteria:
        return dataset
    keep = []
    for i, sample in enumerate(dataset.samples):
        if all(_matches(_meta_value(sample.meta, k), v) for k, v in criteria.items()):
            keep.append(i)
    if not keep:
        raise ScenarioError(f"{where}: no sample of {dataset.name!r} matches {criteria}")
    return dataset.subset(keep)


def _meta_value(meta: dict[str, Any], key: str) -> Any:
    if key in meta:
        return meta[key]
    return meta.get("attributes", {}).get(key)


def _matches(value: Any, wanted: Any) -> bool:
    options = wanted if isinstance(wanted, list) else [wanted]
    return str(value) in {str(o) for o in options}


def _load_site(spec: SiteSpec, data_root, layout: str, num_frames: int, num_persons: int, seed: int) -> SiteArrays:
    from skeletons.partition import partition, train_test_split
    from skeletons.preprocess import PreprocessConfig, to_arrays

    dataset = site_dataset(spec, data_root, layout, seed)
    split = dict(spec.split)
    if spec.partition is not None:
        part = dict(spec.partition)
        index = int(part.pop("index"))
        sites = partition(
            dataset, part.pop("scheme"), int(part.pop("num_sites")), seed=int(part.pop("seed", seed)),
            test_fraction=float(split.get("test_fraction", 0.3)), split_by=str(split.get("by", "sample")), **part,
        )
        if index >= len(sites):
            raise ScenarioError(f"site {spec.name!r}: partition index {index} but only {len(sites)} sites")
        train, test = sites[index].train, sites[index].test
    elif "protocol" in split:  # a published protocol, e.g. NTU cross-subject
        from skeletons.standard_splits import split_dataset

        train, test = split_dataset(dataset, str(split["protocol"]))
    elif "train" in split and "test" in split:
        train = select(dataset, split["train"], where=f"site {spec.name!r} train split")
        test = select(dataset, split["test"], where=f"site {spec.name!r} test split")
    else:
        train, test = train_test_split(
            dataset,
            test_fraction=float(split.get("test_fraction", 0.3)),
            seed=int(split.get("seed", seed)),
            by=str(split.get("by", "sample")),
        )
    config = PreprocessConfig(num_frames=num_frames, num_persons=num_persons)
    x_train, y_train = to_arrays(train, config)
    x_test, y_test = to_arrays(test, config)
    log.info("site %s: %d train / %d test sequences, %d classes", spec.name, len(y_train), len(y_test), len(dataset.classes))
    return SiteArrays(
        name=spec.name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        classes=list(dataset.classes), subjects_train=[s.subject for s in train.samples],
    )
