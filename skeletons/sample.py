"""The data contract: one skeleton sample and a data set of them.

Joints are ``float32 [T, M, V, 3]`` (frames, persons, joints, xyz) in the data set's
layout. Everything downstream (preprocessing, partitioning, training) relies on this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from skeletons.layouts import Layout


@dataclass
class SkeletonSample:
    """One recorded sequence with its label and metadata.

    ``meta`` holds at least ``dataset``, ``subject`` (str), ``view`` (str or None) and
    ``source`` (the file it came from); ``attributes`` (dict) where the data set has them,
    e.g. Kinder-Gator's ``sex``, ``age`` and ``group`` (child or adult).
    """

    joints: np.ndarray
    label: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return str(self.meta.get("subject"))

    @property
    def view(self) -> str | None:
        v = self.meta.get("view")
        return None if v is None else str(v)

    @property
    def attributes(self) -> dict[str, Any]:
        return self.meta.get("attributes", {})


@dataclass
class SkippedFile:
    """A file a loader refused, and why: loaders report these instead of dropping silently."""

    path: str
    reason: str


@dataclass
class SkeletonDataset:
    """Samples of one data set in one layout, with their class names."""

    name: str
    layout: Layout
    classes: list[str]
    samples: list[SkeletonSample]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[SkeletonSample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> SkeletonSample:
        return self.samples[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def subjects(self) -> list[str]:
        return sorted({s.subject for s in self.samples})

    @property
    def views(self) -> list[str]:
        return sorted({s.view for s in self.samples if s.view is not None})

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "SkeletonDataset":
        """A data set holding only the given samples (same classes and layout)."""
        return SkeletonDataset(
            name=name or self.name,
            layout=self.layout,
            classes=list(self.classes),
            samples=[self.samples[i] for i in indices],
        )

    def where(self, **meta: Any) -> "SkeletonDataset":
        """Samples whose metadata equals every given value, e.g. ``where(view="3")``."""
        keep = [
            i for i, s in enumerate(self.samples)
            if all(str(s.meta.get(k)) == str(v) for k, v in meta.items())
        ]
        return self.subset(keep)
