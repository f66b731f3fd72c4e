"""The published train/test protocols of the NTU family, so results compare with papers.

- NTU RGB+D 60 cross-subject (``xsub``): 20 training performers, the other 20 test.
- NTU RGB+D 60 cross-view (``xview``): cameras 2 and 3 train, camera 1 tests.
- NTU RGB+D 120 cross-subject (``xsub``): 53 training performers (the published list;
  its members up to 40 are exactly the NTU-60 list, so one rule serves both).
- NTU RGB+D 120 cross-setup (``xset``): even setup numbers train, odd ones test.
- Any other data set whose reader recorded the official assignment in the sample's
  metadata as ``split_<protocol>`` (pyskl split lists, PKU-MMD split files, CTR-GCN
  ``.npz`` files) uses that record.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from skeletons.ntu_family import parse_ntu_name
from skeletons.sample import SkeletonDataset

Split = Literal["train", "test"]

NTU60_XSUB_TRAIN_SUBJECTS: frozenset[int] = frozenset({
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38,
})
NTU60_XVIEW_TRAIN_CAMERAS: frozenset[int] = frozenset({2, 3})
NTU120_XSUB_TRAIN_SUBJECTS: frozenset[int] = NTU60_XSUB_TRAIN_SUBJECTS | frozenset({
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84,
    85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103,
})
NTU120_XSET_TRAIN_SETUPS: frozenset[int] = frozenset(range(2, 33, 2))

_DATASETS = {
    "ntu": "ntu", "ntu60": "ntu60", "ntu-60": "ntu60", "ntu_60": "ntu60",
    "nturgbd60": "ntu60", "ntu120": "ntu120", "ntu-120": "ntu120", "ntu_120": "ntu120",
    "nturgbd120": "ntu120",
}
_PROTOCOLS = {
    "xsub": "xsub", "cs": "xsub", "csub": "xsub", "cross-subject": "xsub",
    "cross_subject": "xsub",
    "xview": "xview", "cv": "xview", "cross-view": "xview", "cross_view": "xview",
    "xset": "xset", "cset": "xset", "csetup": "xset", "cross-setup": "xset",
    "cross_setup": "xset",
}
NTU_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "ntu60": ("xsub", "xview"),
    "ntu120": ("xsub", "xset"),
    "ntu": ("xsub", "xview", "xset"),
}


def normalize_protocol(protocol: str) -> str:
    """``xsub``, ``xview`` or ``xset`` for any usual spelling (CS, cross-view, CSet...)."""
    key = str(protocol).strip().lower()
    return _PROTOCOLS.get(key, key)


def standard_split(dataset_name: str, protocol: str, sample_meta: Mapping[str, Any]) -> Split:
    """``"train"`` or ``"test"`` for one sample under a published protocol.

    NTU data sets decide from the sample's ids (``subject``, ``camera``/``view``,
    ``setup``; parsed from ``frame_dir``/``source`` when absent); a sample whose ids are
    unknown falls back to a recorded ``split_<protocol>``. Other data sets use the
    recorded ``split_<protocol>`` only. Anything undecidable raises ``ValueError``
    naming the missing field.
    """
    proto = normalize_protocol(protocol)
    recorded = sample_meta.get(f"split_{proto}")
    name = _DATASETS.get(str(dataset_name).strip().lower())
    if name is None:
        if recorded in ("train", "test"):
            return recorded
        raise ValueError(
            f"no standard {proto!r} split known for data set {dataset_name!r} and the sample "
            f"has no 'split_{proto}' record (from {sample_meta.get('source', 'unknown source')})"
        )
    if proto not in NTU_PROTOCOLS[name]:
        raise ValueError(
            f"protocol {protocol!r} is not defined for {dataset_name!r}; "
            f"known: {', '.join(NTU_PROTOCOLS[name])}"
        )
    field = {"xsub": "subject", "xview": "camera", "xset": "setup"}[proto]
    value = _ntu_id(sample_meta, field)
    if value is None:
        if recorded in ("train", "test"):
            return recorded
        raise ValueError(
            f"cannot apply NTU {proto} to a sample without a known {field!r} "
            f"(source {sample_meta.get('source', 'unknown')}); give its NTU name or ids"
        )
    if proto == "xsub":
        train = value in NTU120_XSUB_TRAIN_SUBJECTS
    elif proto == "xview":
        train = value in NTU60_XVIEW_TRAIN_CAMERAS
    else:
        train = value in NTU120_XSET_TRAIN_SETUPS
    return "train" if train else "test"


def split_dataset(
    dataset: SkeletonDataset, protocol: str, dataset_name: str | None = None
) -> tuple[SkeletonDataset, SkeletonDataset]:
    """The training and test parts of ``dataset`` under ``protocol``."""
    name = dataset_name or dataset.name
    parts: dict[str, list[int]] = {"train": [], "test": []}
    for i, sample in enumerate(dataset.samples):
        parts[standard_split(name, protocol, sample.meta)].append(i)
    proto = normalize_protocol(protocol)
    return (
        dataset.subset(parts["train"], name=f"{dataset.name}-{proto}-train"),
        dataset.subset(parts["test"], name=f"{dataset.name}-{proto}-test"),
    )


def _ntu_id(meta: Mapping[str, Any], field: str) -> int | None:
    """An integer id from the metadata, the view (for the camera) or the sample's name."""
    candidates = [meta.get(field)]
    if field == "camera":
        candidates.append(meta.get("view"))
    for value in candidates:
        if value is None:
            continue
        try:
            return int(str(value).lstrip("SCPscp"))
        except ValueError:
            continue
    for key in ("frame_dir", "name", "source"):
        parsed = parse_ntu_name(str(meta.get(key, "")))
        if parsed is not None:
            return getattr(parsed, field)
    return None
