"""Turn recorded sequences of any length into fixed-size model input ``[N, 3, T, V, M]``.

Per sequence (lengths differ): drop frames where no body was tracked (all zeros or NaN),
fill joints the sensor lost by interpolating over time, keep the ``num_persons`` most
present and most moving bodies, and resample linearly to ``num_frames``. Then, on the
whole batch at once: centre on the first frame's body centre joint (the global motion,
e.g. walking, is kept), divide by the mean torso length (children and adults become
comparable), and optionally rotate about the vertical axis so that the person faces the
camera. A body slot that is absent in a frame stays all zeros throughout.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from skeletons.layouts import Layout
from skeletons.sample import SkeletonDataset, SkeletonSample

log = logging.getLogger(__name__)

_EPS = 1e-6
_CHUNK = 1024  # samples transformed at once: bounds memory on large data sets


@dataclass(frozen=True)
class PreprocessConfig:
    """How sequences become model input; part of the cache key, so keep it plain data."""

    num_frames: int = 52
    num_persons: int = 1
    center: bool = True
    normalize_scale: bool = True
    canonical_view: bool = False
    drop_invalid_frames: bool = True

    def __post_init__(self) -> None:
        for name in ("num_frames", "num_persons"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PreprocessConfig.{name} must be a positive integer, not {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- one sequence, [T, M, V, 3]

def joint_validity(joints: np.ndarray) -> np.ndarray:
    """bool ``[T, M, V]``: the joint has finite coordinates that are not exactly (0, 0, 0)."""
    return np.isfinite(joints).all(axis=-1) & (joints != 0).any(axis=-1)


def drop_invalid_frames(joints: np.ndarray) -> np.ndarray:
    """Frames in which at least one body has a valid joint; may return zero frames."""
    return joints[joint_validity(joints).any(axis=(1, 2))]


def fill_missing(joints: np.ndarray, fill_empty_frames: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fill lost joints of each present body; return ``(joints, present [T, M])``.

    A lost joint (NaN or all zero) is linearly interpolated over time from the frames in
    which that joint of that body was seen (held constant before the first and after the
    last); a joint never seen takes the centroid of the body's other joints in that frame.
    A body absent from a frame is all zeros there, unless ``fill_empty_frames``: then frames
    in which nobody was tracked are filled for every body seen elsewhere.
    """
    out = np.array(joints, dtype=np.float32, copy=True)
    valid = joint_validity(out)
    present = valid.any(axis=2)
    if fill_empty_frames:
        empty = ~present.any(axis=1)
        present[empty] = present.any(axis=0)
    need = present[:, :, None] & ~valid
    if need.any():
        frames = np.arange(len(out))
        for m, v in zip(*np.nonzero(need.any(axis=0))):
            seen = valid[:, m, v]
            todo = need[:, m, v]
            if seen.any():
                for c in range(3):
                    out[todo, m, v, c] = np.interp(frames[todo], frames[seen], out[seen, m, v, c])
            else:
                for t in np.flatnonzero(todo):
                    others = valid[t, m]
                    out[t, m, v] = out[t, m, others].mean(axis=0) if others.any() else 0.0
        still = present & ~joint_validity(out).any(axis=2)
        present &= ~still  # a body with nothing to fill from is absent in that frame
    out[~present] = 0.0
    return out, present


def select_persons(joints: np.ndarray, present: np.ndarray, num_persons: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``num_persons`` bodies present in most frames (ties: the most moving); pad
    with absent bodies when there are fewer."""
    t, m = present.shape
    if m > 1:
        motion = np.where(present[:, :, None, None], joints, np.nan)
        with warnings.catch_warnings():  # a body absent from every frame: all-NaN slice
            warnings.simplefilter("ignore", RuntimeWarning)
            energy = np.nan_to_num(np.nanvar(motion, axis=0).sum(axis=(1, 2)))
        order = np.lexsort((-energy, -present.sum(axis=0)))[:num_persons]
        joints, present = joints[:, order], present[:, order]
    if joints.shape[1] < num_persons:
        pad = num_persons - joints.shape[1]
        joints = np.concatenate([joints, np.zeros((t, pad) + joints.shape[2:], np.float32)], 1)
        present = np.concatenate([present, np.zeros((t, pad), bool)], axis=1)
    return joints, present


def resample(joints: np.ndarray, present: np.ndarray, num_frames: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation to ``num_frames`` frames; between a present and an absent body
    the nearest frame is taken instead, so absent bodies are never blended in."""
    t = len(joints)
    pos = np.linspace(0.0, t - 1, num_frames)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w = (pos - i0).astype(np.float32)[:, None, None, None]
    blended = joints[i0] * (1 - w) + joints[i1] * w
    nearest = np.where(pos - i0 < 0.5, i0, i1)
    both = present[i0] & present[i1]
    out = np.where(both[:, :, None, None], blended, joints[nearest])
    return out.astype(np.float32, copy=False), both | present[nearest]


def prepare_sequence(joints: np.ndarray, config: PreprocessConfig
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The per-sequence steps: ``[T, M, V, 3]`` -> ``([num_frames, num_persons, V, 3],
    present [num_frames, num_persons])``; a sequence with no valid frame becomes zeros."""
    if config.drop_invalid_frames:
        joints = drop_invalid_frames(joints)
    v = joints.shape[2]
    if len(joints) == 0:
        return (np.zeros((config.num_frames, config.num_persons, v, 3), np.float32),
                np.zeros((config.num_frames, config.num_persons), bool))
    joints, present = fill_missing(joints, fill_empty_frames=not config.drop_invalid_frames)
    joints, present = select_persons(joints, present, config.num_persons)
    return resample(joints, present, config.num_frames)


# ------------------------------------------------------------ a batch, [N, T, M, V, 3]

def reference_frame(present: np.ndarray) -> np.ndarray:
    """Per sample, the first frame in which the main body (slot 0) is present, ``[N]``."""
    return np.argmax(present[:, :, 0], axis=1)


def center_batch(x: np.ndarray, present: np.ndarray, layout: Layout) -> np.ndarray:
    """Subtract the main body's centre joint at its first present frame, in place."""
    n = np.arange(len(x))
    origin = x[n, reference_frame(present), 0, layout.center]  # [N, 3]
    x -= origin[:, None, None, None, :]
    x[~present] = 0.0
    return x


def torso_length(x: np.ndarray, present: np.ndarray, layout: Layout) -> np.ndarray:
    """Mean hip-centre to shoulder-centre distance of the main body, ``[N]``; layouts
    without those joints use the mean bone length."""
    main = present[:, :, 0]
    if "hip_center" in layout.joints and "shoulder_center" in layout.joints:
        a, b = layout.index("hip_center"), layout.index("shoulder_center")
        length = np.linalg.norm(x[:, :, 0, a] - x[:, :, 0, b], axis=-1)  # [N, T]
    else:
        bones = np.array(layout.bones)
        length = np.linalg.norm(x[:, :, 0, bones[:, 0]] - x[:, :, 0, bones[:, 1]], axis=-1)
        length = length.mean(axis=-1)
    count = main.sum(axis=1)
    return np.where(count > 0, (length * main).sum(axis=1) / np.maximum(count, 1), 0.0)


def normalize_scale_batch(x: np.ndarray, present: np.ndarray, layout: Layout) -> np.ndarray:
    """Divide each sample by its torso length (samples with no torso are left as they are)."""
    scale = torso_length(x, present, layout)
    scale = np.where(scale > _EPS, scale, 1.0).astype(np.float32)
    x /= scale[:, None, None, None, None]
    return x


def facing_angle(x: np.ndarray, present: np.ndarray, layout: Layout) -> np.ndarray:
    """Angle about the vertical (y) axis of the main body's left-to-right direction
    (shoulders and hips) in its first present frame, ``[N]``."""
    n = np.arange(len(x))
    frame = x[n, reference_frame(present), 0]  # [N, V, 3]
    d = np.zeros((len(x), 3), np.float32)
    for left, right in (("shoulder_left", "shoulder_right"), ("hip_left", "hip_right")):
        if left in layout.joints and right in layout.joints:
            d += frame[:, layout.index(right)] - frame[:, layout.index(left)]
    return np.arctan2(d[:, 2], d[:, 0])


def canonical_view_batch(x: np.ndarray, present: np.ndarray, layout: Layout) -> np.ndarray:
    """Rotate each sample about the vertical axis through its first-frame centre joint so
    that left-to-right shoulders and hips point along +x; the vertical is left unchanged."""
    theta = facing_angle(x, present, layout)
    c, s = np.cos(theta), np.sin(theta)
    rot = np.zeros((len(x), 3, 3), np.float32)
    rot[:, 0, 0], rot[:, 0, 2] = c, s
    rot[:, 1, 1] = 1.0
    rot[:, 2, 0], rot[:, 2, 2] = -s, c
    n = np.arange(len(x))
    origin = x[n, reference_frame(present), 0, layout.center][:, None, None, None, :]
    x[:] = np.einsum("nij,ntmvj->ntmvi", rot, x - origin) + origin
    x[~present] = 0.0
    return x


def transform_batch(x: np.ndarray, present: np.ndarray, layout: Layout,
                    config: PreprocessConfig) -> np.ndarray:
    """The whole-batch steps on ``[N, T, M, V, 3]``, in place."""
    if config.center:
        center_batch(x, present, layout)
    if config.normalize_scale:
        normalize_scale_batch(x, present, layout)
    if config.canonical_view:
        canonical_view_batch(x, present, layout)
    return x


# ------------------------------------------------------------------------------ data sets

def preprocess_samples(samples: Iterable[SkeletonSample], layout: Layout,
                       config: PreprocessConfig) -> np.ndarray:
    """Samples -> float32 ``[N, 3, T, V, M]``; sequences without a valid frame become zeros
    and are named in a warning."""
    samples = list(samples)
    n, v = len(samples), layout.num_joints
    out = np.zeros((n, 3, config.num_frames, v, config.num_persons), np.float32)
    empty: list[str] = []
    for start in range(0, n, _CHUNK):
        chunk = samples[start:start + _CHUNK]
        x = np.zeros((len(chunk), config.num_frames, config.num_persons, v, 3), np.float32)
        present = np.zeros((len(chunk), config.num_frames, config.num_persons), bool)
        for i, sample in enumerate(chunk):
            if sample.joints.ndim != 4 or sample.joints.shape[2:] != (v, 3):
                raise ValueError(
                    f"{sample.meta.get('source', f'sample {start + i}')}: joints of shape "
                    f"{list(sample.joints.shape)} do not fit layout {layout.name!r} [T, M, {v}, 3]")
            x[i], present[i] = prepare_sequence(sample.joints, config)
            if not present[i].any():
                empty.append(str(sample.meta.get("source", start + i)))
        transform_batch(x, present, layout, config)
        out[start:start + len(chunk)] = x.transpose(0, 4, 1, 3, 2)
    if empty:
        log.warning("%d sequence(s) have no valid frame and are all zeros: %s",
                    len(empty), ", ".join(empty))
    return out


def to_arrays(dataset: SkeletonDataset, config: PreprocessConfig | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Model input ``x`` float32 ``[N, 3, T, V, M]`` and labels ``y`` int64 ``[N]``."""
    config = config or PreprocessConfig()
    return preprocess_samples(dataset.samples, dataset.layout, config), dataset.labels
