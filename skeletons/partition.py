"""Partitioning one data set into heterogeneous sites, each with its own train and test split.

Simulated federations need sites that differ the way real ones do: another camera
(``view``), another data set, other people (``subject``), other label mixes
(``dirichlet``) or other amounts of data (``quantity``). Every scheme is deterministic
given its seed and places every sample in exactly one site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skeletons.sample import SkeletonDataset, SkeletonSample

META_SCHEMES = {"view": "view", "dataset": "dataset"}
SCHEMES = ("view", "dataset", "subject", "dirichlet", "quantity", "meta:<key>")
MAX_DRAWS = 1000


class PartitionError(ValueError):
    """A partition cannot be made as asked; the message names the scheme and the value."""


@dataclass
class SiteSplit:
    """One site: its train and test data, and where they came from in the whole data set."""

    name: str
    train: SkeletonDataset
    test: SkeletonDataset
    train_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def indices(self) -> np.ndarray:
        """Indices into the partitioned data set of all the site's samples."""
        return np.sort(np.concatenate([self.train_indices, self.test_indices]))


def meta_value(sample: SkeletonSample, key: str) -> Any:
    """``key`` of a sample's metadata; ``attributes.<name>`` or a bare attribute name also work."""
    if key.startswith("attributes."):
        return sample.attributes.get(key.split(".", 1)[1])
    if key in sample.meta:
        return sample.meta[key]
    return sample.attributes.get(key)


def _natural_key(value: str) -> list[Any]:
    """Sort "2" before "10" and "v2" before "v10"."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", value)]


def _check_nonempty(dataset: SkeletonDataset) -> None:
    if len(dataset) == 0:
        raise PartitionError(f"data set {dataset.name!r} has no samples to partition")


def by_metadata(dataset: SkeletonDataset, key: str) -> dict[str, np.ndarray]:
    """One site per distinct value of metadata ``key`` (e.g. view, dataset, subject)."""
    _check_nonempty(dataset)
    values = [meta_value(s, key) for s in dataset.samples]
    missing = sum(v is None for v in values)
    if missing:
        raise PartitionError(
            f"data set {dataset.name!r}: {missing} of {len(values)} samples have no metadata {key!r}, "
            "so they would belong to no site"
        )
    names = [str(v) for v in values]
    sites = {}
    for value in sorted(set(names), key=_natural_key):
        sites[value] = np.array([i for i, n in enumerate(names) if n == value], dtype=np.int64)
    return sites


def by_subject(dataset: SkeletonDataset, num_sites: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``num_sites`` sites with disjoint subjects and about the same number of samples each."""
    _check_nonempty(dataset)
    _check_num_sites(num_sites)
    subjects = dataset.subjects
    if num_sites > len(subjects):
        raise PartitionError(
            f"scheme 'subject': {num_sites} sites asked but data set {dataset.name!r} has only "
            f"{len(subjects)} subjects"
        )
    of_sample = np.array([s.subject for s in dataset.samples])
    counts = {s: int((of_sample == s).sum()) for s in subjects}
    order = np.random.default_rng(seed).permutation(len(subjects))
    # Largest subjects first (ties in random order), each to the site with fewest samples.
    ranked = sorted((subjects[i] for i in order), key=lambda s: -counts[s])
    load = np.zeros(num_sites, dtype=np.int64)
    members: list[list[str]] = [[] for _ in range(num_sites)]
    for subject in ranked:
        site = int(np.argmin(load))
        members[site].append(subject)
        load[site] += counts[subject]
    return {
        _site_name(i, num_sites): np.flatnonzero(np.isin(of_sample, group)).astype(np.int64)
        for i, group in enumerate(members)
    }


def dirichlet_label_skew(
    dataset: SkeletonDataset, num_sites: int, alpha: float = 0.5, seed: int = 0, min_size: int = 2
) -> dict[str, np.ndarray]:
    """Label skew: each class's samples are spread over sites by proportions ~ Dirichlet(alpha).

    Small ``alpha`` gives each site a few dominant classes; large ``alpha`` approaches an
    even mix. Draws are repeated until every site has at least ``min_size`` samples.
    """
    _check_nonempty(dataset)
    _check_num_sites(num_sites)
    if not alpha > 0:
        raise PartitionError(f"scheme 'dirichlet': alpha={alpha} must be > 0")
    _check_min_size(dataset, num_sites, min_size, "dirichlet")
    labels = dataset.labels
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(MAX_DRAWS):
        assignment = [[] for _ in range(num_sites)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(num_sites, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).round().astype(np.int64)
            for site, part in enumerate(np.split(idx, cuts)):
                assignment[site].extend(part.tolist())
        if min(len(a) for a in assignment) >= min_size:
            return {_site_name(i, num_sites): np.sort(np.array(a, dtype=np.int64)) for i, a in enumerate(assignment)}
    raise PartitionError(
        f"scheme 'dirichlet': no draw in {MAX_DRAWS} gave every one of {num_sites} sites at least "
        f"{min_size} samples (alpha={alpha}, {len(dataset)} samples); raise alpha or lower min_size"
    )


def quantity_skew(
    dataset: SkeletonDataset, num_sites: int, seed: int = 0, alpha: float | None = None,
    power: float | None = None, min_size: int = 2,
) -> dict[str, np.ndarray]:
    """Quantity skew: sites of unequal size, labels mixed at random.

    Sizes follow Dirichlet(``alpha``) shares (default alpha 1.0) or, with ``power``, a
    power law where site ``i`` gets a share proportional to ``(i + 1) ** -power``.
    Every site gets at least ``min_size`` samples.
    """
    _check_nonempty(dataset)
    _check_num_sites(num_sites)
    if alpha is not None and power is not None:
        raise PartitionError("scheme 'quantity': give alpha (Dirichlet sizes) or power (power law), not both")
    _check_min_size(dataset, num_sites, min_size, "quantity")
    rng = np.random.default_rng(seed)
    n = len(dataset)
    if power is not None:
        if power < 0:
            raise PartitionError(f"scheme 'quantity': power={power} must be >= 0")
        shares = (np.arange(num_sites) + 1.0) ** -float(power)
        shares /= shares.sum()
    else:
        alpha = 1.0 if alpha is None else float(alpha)
        if not alpha > 0:
            raise PartitionError(f"scheme 'quantity': alpha={alpha} must be > 0")
        shares = rng.dirichlet(np.full(num_sites, alpha))
    # min_size each, the rest by share (largest remainders), so sizes sum to n exactly.
    spare = n - min_size * num_sites
    raw = shares * spare
    sizes = np.floor(raw).astype(np.int64)
    sizes[np.argsort(-(raw - sizes), kind="stable")[: spare - sizes.sum()]] += 1
    sizes += min_size
    order = rng.permutation(n)
    parts = np.split(order, np.cumsum(sizes)[:-1])
    return {_site_name(i, num_sites): np.sort(p).astype(np.int64) for i, p in enumerate(parts)}


def train_test_indices(
    dataset: SkeletonDataset, test_fraction: float = 0.3, seed: int = 0, by: str = "sample",
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train and a test split.

    ``by="sample"`` draws test samples (per class when ``stratify``, so each class keeps
    about ``test_fraction`` in test and at least one in train); ``by="subject"`` puts whole
    subjects in test, so test subjects are unseen in training.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise PartitionError(f"test_fraction={test_fraction} must lie in [0, 1)")
    n = len(dataset)
    if n == 0:
        raise PartitionError(f"data set {dataset.name!r} has no samples to split")
    rng = np.random.default_rng(seed)
    if by == "subject":
        test = _subject_test(dataset, test_fraction, rng)
    elif by == "sample":
        test = _sample_test(dataset, test_fraction, stratify, rng)
    else:
        raise PartitionError(f"split by={by!r}: use 'sample' or 'subject'")
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _sample_test(dataset: SkeletonDataset, fraction: float, stratify: bool, rng: np.random.Generator) -> np.ndarray:
    n = len(dataset)
    if fraction == 0:
        return np.zeros(0, dtype=np.int64)
    if n < 2:
        raise PartitionError(f"data set {dataset.name!r} has {n} sample; a test split needs at least 2")
    if not stratify:
        k = min(max(1, round(fraction * n)), n - 1)
        return rng.permutation(n)[:k]
    labels = dataset.labels
    test: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(round(fraction * len(idx)), len(idx) - 1)
        test.extend(idx[:k].tolist())
    if not test:  # every class too small: take one sample of the largest class
        counts = np.bincount(labels)
        c = int(np.argmax(counts))
        test.append(int(rng.choice(np.flatnonzero(labels == c))))
    return np.array(test, dtype=np.int64)


def _subject_test(dataset: SkeletonDataset, fraction: float, rng: np.random.Generator) -> np.ndarray:
    if fraction == 0:
        return np.zeros(0, dtype=np.int64)
    subjects = dataset.subjects
    if len(subjects) < 2:
        raise PartitionError(
            f"data set {dataset.name!r} has {len(subjects)} subject(s); a subject-wise split needs at least 2"
        )
    k = min(max(1, round(fraction * len(subjects))), len(subjects) - 1)
    chosen = [subjects[i] for i in rng.permutation(len(subjects))[:k]]
    of_sample = np.array([s.subject for s in dataset.samples])
    return np.flatnonzero(np.isin(of_sample, chosen))


def train_test_split(
    dataset: SkeletonDataset, test_fraction: float = 0.3, seed: int = 0, by: str = "sample",
    stratify: bool = True,
) -> tuple[SkeletonDataset, SkeletonDataset]:
    """Train and test data sets; see :func:`train_test_indices`."""
    train, test = train_test_indices(dataset, test_fraction, seed, by, stratify)
    return (
        dataset.subset(train.tolist(), name=f"{dataset.name}/train"),
        dataset.subset(test.tolist(), name=f"{dataset.name}/test"),
    )


def site_indices(dataset: SkeletonDataset, scheme: str, num_sites: int | None, seed: int = 0,
                 **options: Any) -> dict[str, np.ndarray]:
    """Site name -> indices of its samples, for a scheme by name (see :func:`partition`)."""
    if scheme in META_SCHEMES or scheme.startswith("meta:"):
        key = META_SCHEMES.get(scheme) or scheme.split(":", 1)[1]
        if not key:
            raise PartitionError("scheme 'meta:' needs a metadata key, e.g. 'meta:subject' or 'meta:attributes.group'")
        _no_options(scheme, options)
        sites = by_metadata(dataset, key)
        if num_sites is not None and num_sites != len(sites):
            values = ", ".join(list(sites)[:12]) + (" ..." if len(sites) > 12 else "")
            raise PartitionError(
                f"scheme {scheme!r} gives {len(sites)} sites (one per {key}: {values}) but num_sites={num_sites}"
            )
        return {f"{key.removeprefix('attributes.')}-{value}": idx for value, idx in sites.items()}
    if num_sites is None:
        raise PartitionError(f"scheme {scheme!r} needs num_sites")
    if scheme == "subject":
        _no_options(scheme, options)
        return by_subject(dataset, num_sites, seed)
    if scheme == "dirichlet":
        _only_options(scheme, options, {"alpha", "min_size"})
        return dirichlet_label_skew(dataset, num_sites, seed=seed, **options)
    if scheme == "quantity":
        _only_options(scheme, options, {"alpha", "power", "min_size"})
        return quantity_skew(dataset, num_sites, seed=seed, **options)
    raise PartitionError(f"unknown partition scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def partition(
    dataset: SkeletonDataset, scheme: str, num_sites: int | None = None, seed: int = 0, *,
    test_fraction: float = 0.3, split_by: str = "sample", stratify: bool = True, **options: Any,
) -> list[SiteSplit]:
    """Split ``dataset`` into sites by ``scheme``, each with its own train and test split.

    Schemes: ``view``, ``dataset`` and ``meta:<key>`` (one site per distinct metadata
    value; ``num_sites`` may be None, or must match), ``subject`` (disjoint subjects),
    ``dirichlet`` (label skew; options ``alpha``, ``min_size``) and ``quantity``
    (size skew; options ``alpha`` or ``power``, ``min_size``). ``split_by="subject"``
    keeps each site's test subjects out of its training data.
    """
    sites = site_indices(dataset, scheme, num_sites, seed, **options)
    result = []
    for i, (name, idx) in enumerate(sites.items()):
        if len(idx) == 0:
            raise PartitionError(f"scheme {scheme!r}: site {name!r} would be empty")
        part = dataset.subset(idx.tolist(), name=f"{dataset.name}/{name}")
        try:
            train, test = train_test_indices(part, test_fraction, seed + 1 + i, split_by, stratify)
        except PartitionError as err:
            raise PartitionError(f"scheme {scheme!r}, site {name!r} ({len(idx)} samples): {err}") from None
        result.append(SiteSplit(
            name=name,
            train=part.subset(train.tolist(), name=f"{part.name}/train"),
            test=part.subset(test.tolist(), name=f"{part.name}/test"),
            train_indices=idx[train],
            test_indices=idx[test],
        ))
    return result


def _site_name(i: int, num_sites: int) -> str:
    return f"site-{i:0{len(str(num_sites - 1))}d}"


def _check_num_sites(num_sites: int) -> None:
    if int(num_sites) != num_sites or num_sites < 1:
        raise PartitionError(f"num_sites={num_sites!r} must be a positive integer")


def _check_min_size(dataset: SkeletonDataset, num_sites: int, min_size: int, scheme: str) -> None:
    if min_size < 1:
        raise PartitionError(f"scheme {scheme!r}: min_size={min_size} must be >= 1 (no site may be empty)")
    if min_size * num_sites > len(dataset):
        raise PartitionError(
            f"scheme {scheme!r}: {num_sites} sites of at least {min_size} samples need "
            f"{min_size * num_sites} samples, data set {dataset.name!r} has {len(dataset)}"
        )


def _no_options(scheme: str, options: dict[str, Any]) -> None:
    _only_options(scheme, options, set())


def _only_options(scheme: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        allowed_text = ", ".join(sorted(allowed)) or "none"
        raise PartitionError(
            f"scheme {scheme!r}: unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed_text}"
        )
