"""Partitioning into sites: full coverage, determinism, skew, disjoint subjects, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from skeletons.partition import (
    PartitionError,
    by_subject,
    dirichlet_label_skew,
    partition,
    quantity_skew,
    train_test_split,
)
from skeletons.sample import SkeletonDataset
from skeletons.synthetic import DomainShift, generate_synthetic

SCHEMES = [
    ("view", None, {}),
    ("dataset", None, {}),
    ("subject", 3, {}),
    ("dirichlet", 4, {"alpha": 0.3}),
    ("quantity", 4, {"power": 1.0}),
    ("quantity", 3, {"alpha": 2.0, "min_size": 10}),
    ("meta:attributes.group", 2, {}),
    ("meta:subject", None, {}),
]


@pytest.fixture(scope="module")
def data() -> SkeletonDataset:
    views = [DomainShift(name="v1"), DomainShift(yaw=35, name="v2"), DomainShift(yaw=-35, name="v3")]
    return generate_synthetic(num_classes=8, num_subjects=6, samples_per_class_subject=2, num_frames=12,
                              domain=views, seed=0)


def _indices(sites):
    return [s.indices.tolist() for s in sites]


@pytest.mark.parametrize("scheme, num_sites, options", SCHEMES)
def test_every_sample_lands_in_exactly_one_site(data, scheme, num_sites, options):
    sites = partition(data, scheme, num_sites, seed=1, **options)
    assert num_sites is None or len(sites) == num_sites
    everything = np.concatenate([np.concatenate([s.train_indices, s.test_indices]) for s in sites])
    assert sorted(everything.tolist()) == list(range(len(data)))
    names = [s.name for s in sites]
    assert len(set(names)) == len(names)
    for site in sites:
        assert len(site.train) > 0 and len(site.test) > 0
        assert not set(site.train_indices.tolist()) & set(site.test_indices.tolist())
        assert [id(s) for s in site.train] == [id(data[i]) for i in site.train_indices]
        assert [id(s) for s in site.test] == [id(data[i]) for i in site.test_indices]
        assert site.train.classes == data.classes and site.train.layout is data.layout


RANDOM_SCHEMES = [s for s in SCHEMES if s[0] in {"subject", "dirichlet", "quantity"}]


@pytest.mark.parametrize("scheme, num_sites, options", RANDOM_SCHEMES)
def test_same_seed_same_partition_other_seed_differs(data, scheme, num_sites, options):
    a = partition(data, scheme, num_sites, seed=7, **options)
    b = partition(data, scheme, num_sites, seed=7, **options)
    c = partition(data, scheme, num_sites, seed=8, **options)
    assert [s.train_indices.tolist() for s in a] == [s.train_indices.tolist() for s in b]
    assert [s.test_indices.tolist() for s in a] == [s.test_indices.tolist() for s in b]
    assert [s.train_indices.tolist() for s in a] != [s.train_indices.tolist() for s in c]


def test_view_sites_hold_one_view_each(data):
    sites = partition(data, "view", 3, seed=0)
    assert [s.name for s in sites] == ["view-v1", "view-v2", "view-v3"]
    for site, view in zip(sites, ["v1", "v2", "v3"]):
        assert {s.view for s in site.train} | {s.view for s in site.test} == {view}


def test_subject_sites_keep_subjects_disjoint_and_balanced(data):
    sites = by_subject(data, 4, seed=3)
    subjects = [{data[i].subject for i in idx} for idx in sites.values()]
    assert all(subjects)
    for i, a in enumerate(subjects):
        for b in subjects[i + 1:]:
            assert not a & b
    assert set().union(*subjects) == set(data.subjects)
    sizes = [len(idx) for idx in sites.values()]
    assert max(sizes) <= 2 * min(sizes)


def _label_skew(sites: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each site's label mix and the global one."""
    k = labels.max() + 1
    overall = np.bincount(labels, minlength=k) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[idx], minlength=k) / len(idx) - overall).sum()
                          for idx in sites.values()]))


def test_small_dirichlet_alpha_skews_labels_more_than_large(data):
    labels = data.labels
    small = np.mean([_label_skew(dirichlet_label_skew(data, 4, alpha=0.1, seed=s), labels) for s in range(5)])
    large = np.mean([_label_skew(dirichlet_label_skew(data, 4, alpha=100.0, seed=s), labels) for s in range(5)])
    assert small > 0.4
    assert large < 0.15
    assert small > 3 * large


def test_dirichlet_respects_min_size(data):
    for seed in range(5):
        sites = dirichlet_label_skew(data, 6, alpha=0.05, seed=seed, min_size=20)
        assert min(len(i) for i in sites.values()) >= 20


def test_quantity_skew_sizes(data):
    sites = quantity_skew(data, 4, seed=0, power=1.5, min_size=5)
    sizes = [len(i) for i in sites.values()]
    assert sum(sizes) == len(data) and min(sizes) >= 5
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1]
    even = [len(i) for i in quantity_skew(data, 4, seed=0, power=0.0).values()]
    assert max(even) - min(even) <= 1


def test_stratified_split_keeps_every_class_in_train(data):
    train, test = train_test_split(data, test_fraction=0.25, seed=0)
    assert len(train) + len(test) == len(data)
    assert len(test) == pytest.approx(0.25 * len(data), abs=data.num_classes)
    for c in range(data.num_classes):
        n_train, n_test = (train.labels == c).sum(), (test.labels == c).sum()
        assert n_train > 0 and n_test == round(0.25 * (n_train + n_test))


def test_subject_split_keeps_test_subjects_unseen(data):
    for site in partition(data, "view", 3, seed=0, split_by="subject", test_fraction=0.34):
        train_subjects = {s.subject for s in site.train}
        test_subjects = {s.subject for s in site.test}
        assert test_subjects and train_subjects
        assert not train_subjects & test_subjects
        assert len(test_subjects) == 2  # round(0.34 * 6)


def test_no_test_split_when_fraction_is_zero(data):
    sites = partition(data, "subject", 2, seed=0, test_fraction=0.0)
    assert all(len(s.test) == 0 for s in sites)
    assert sum(len(s.train) for s in sites) == len(data)


@pytest.mark.parametrize(
    "scheme, num_sites, options, words",
    [
        ("country", 3, {}, "unknown partition scheme 'country'"),
        ("subject", 7, {}, "only 6 subjects"),
        ("subject", 0, {}, "num_sites"),
        ("subject", None, {}, "needs num_sites"),
        ("view", 4, {}, "gives 3 sites"),
        ("meta:", None, {}, "metadata key"),
        ("meta:camera", None, {}, "'camera'"),
        ("dirichlet", 4, {"alpha": 0.0}, "alpha"),
        ("dirichlet", 4, {"min_size": 0}, "empty"),
        ("dirichlet", 30, {"min_size": 10}, "need 300 samples"),
        ("dirichlet", 4, {"beta": 1.0}, "beta"),
        ("quantity", 4, {"alpha": 1.0, "power": 1.0}, "not both"),
        ("view", 3, {"alpha": 1.0}, "alpha"),
        ("meta:subject", None, {"split_by": "subject"}, "at least 2"),
        ("subject", 2, {"split_by": "person"}, "person"),
    ],
)
def test_impossible_requests_are_clear_errors(data, scheme, num_sites, options, words):
    with pytest.raises(PartitionError, match=words):
        partition(data, scheme, num_sites, seed=0, **options)


def test_missing_metadata_and_empty_data_are_errors(data):
    plain = generate_synthetic(num_classes=2, num_subjects=2, samples_per_class_subject=1, num_frames=8)
    with pytest.raises(PartitionError, match="no metadata 'view'"):
        partition(plain, "view", None)
    with pytest.raises(PartitionError, match="no samples"):
        partition(data.subset([]), "subject", 2)
    with pytest.raises(PartitionError, match="test_fraction"):
        train_test_split(data, test_fraction=1.0)
