"""Cheap, non-learned anonymization: put every person into one canonical body.

Bone lengths, stature and global scale identify a person (and reveal a child) at a
glance, so they are replaced by those of a canonical body while the joint directions
along the kinematic tree (the movement itself) are kept. Other cheap cues are handled
too, each switchable in :class:`BoneNormalizeConfig`:

- ``view``: the camera placement of a recording session (tilt, distance, height) is
  removed by rotating each sequence into a body-aligned frame (x from right hip to left
  hip, y up the spine, z forward) with the root at the origin of its first frame.
- ``root``: the root trajectory is kept but scaled to the canonical body, or dropped.
- ``tempo``: the recorded duration (how fast someone performs an action) is removed by
  resampling the valid frames to the full length of the window.
- ``smooth``: sensor jitter and tremor are averaged out over a few frames.
- ``deadzone``: small departures of each bone from its start direction (sway,
  fidgeting, tremor) are removed and larger ones shrunk by the same amount, so idle
  movement stops telling people apart while deliberate movement remains.
- ``posture``: a person's habitual posture (slouch, arm carriage) is removed by rotating
  each bone so that the pose at the start of the sequence is the canonical rest pose;
  the motion relative to that start is kept. On by default: it is the strongest cheap
  cue of identity after body size; turn it off where actions are static postures.

Arrays use the model convention ``[N, 3, T, V, M]``; persons or frames that are all
zero (absent or padding) stay zero.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from skeletons.layouts import Layout

# Canonical adult body in metres, in the body-aligned frame: x towards the person's left,
# y up, z forward, hip centre at the origin. Joints of every known layout are listed.
CANONICAL_POSE: dict[str, tuple[float, float, float]] = {
    "hip_center": (0.0, 0.0, 0.0),
    "spine": (0.0, 0.22, 0.0),
    "shoulder_center": (0.0, 0.46, 0.0),
    "neck": (0.0, 0.53, 0.0),
    "head": (0.0, 0.66, 0.0),
    "shoulder_left": (0.18, 0.43, 0.0),
    "elbow_left": (0.20, 0.15, 0.0),
    "wrist_left": (0.21, -0.10, 0.0),
    "hand_left": (0.21, -0.18, 0.0),
    "hand_tip_left": (0.21, -0.25, 0.0),
    "thumb_left": (0.19, -0.20, 0.03),
    "hip_left": (0.09, -0.05, 0.0),
    "knee_left": (0.10, -0.48, 0.0),
    "ankle_left": (0.10, -0.88, 0.0),
    "foot_left": (0.10, -0.93, 0.10),
}
for _name, (_x, _y, _z) in list(CANONICAL_POSE.items()):
    if _name.endswith("_left"):
        CANONICAL_POSE[_name[: -len("_left")] + "_right"] = (-_x, _y, _z)

CANONICAL_TORSO = float(np.linalg.norm(np.subtract(CANONICAL_POSE["shoulder_center"], CANONICAL_POSE["hip_center"])))
_DEFAULT_BONE = np.array([0.0, -0.1, 0.0])  # for joint names the canonical body lacks
_EPS = 1e-6


@dataclass(frozen=True)
class BoneNormalizeConfig:
    """Which cheap identity cues to remove; see the module docstring for each."""

    bones: bool = True
    view: bool = True
    root: str = "scaled"  # "scaled" | "keep" | "fixed"
    tempo: bool = True
    smooth: int = 3  # moving-average window in frames; 0 or 1 turns it off
    posture: bool = True
    unit: str = "torso"  # "torso": canonical torso = 1 (as preprocessing scales); "metres"
    deadzone: float = 0.1  # bone-direction changes from the start pose below this are dropped

    def __post_init__(self) -> None:
        if self.root not in ("scaled", "keep", "fixed"):
            raise ValueError(f"BoneNormalizeConfig.root must be scaled, keep or fixed, not {self.root!r}")
        if self.unit not in ("torso", "metres"):
            raise ValueError(f"BoneNormalizeConfig.unit must be torso or metres, not {self.unit!r}")
        if not 0.0 <= self.deadzone < 2.0:
            raise ValueError(f"BoneNormalizeConfig.deadzone must be in [0, 2), not {self.deadzone}")
        if self.smooth < 0:
            raise ValueError(f"BoneNormalizeConfig.smooth must be >= 0, not {self.smooth}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BoneNormalizeConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown bone normalization fields: {', '.join(sorted(unknown))}")
        return cls(**d)


def canonical_pose(layout: Layout, unit: str = "metres") -> np.ndarray:
    """Canonical rest pose ``[V, 3]`` for ``layout`` (root at the origin).

    ``unit="torso"`` divides by the canonical torso (hip centre to shoulder centre), the
    scale preprocessing gives model input. Joints the canonical body does not name hang
    10 cm below their parent.
    """
    pose = np.zeros((layout.num_joints, 3))
    known = np.zeros(layout.num_joints, dtype=bool)
    for i, name in enumerate(layout.joints):
        if name in CANONICAL_POSE:
            pose[i] = CANONICAL_POSE[name]
            known[i] = True
    pose -= pose[layout.center]
    for child, parent in layout.parent_first_bones:
        if not known[child]:
            pose[child] = pose[parent] + _DEFAULT_BONE
    if unit == "torso":
        return pose / CANONICAL_TORSO
    if unit != "metres":
        raise ValueError(f"unit must be torso or metres, not {unit!r}")
    return pose


def canonical_bone_lengths(layout: Layout, unit: str = "metres") -> np.ndarray:
    """Length of each bone, in ``Layout.parent_first_bones`` order, in the canonical body."""
    pose = canonical_pose(layout, unit)
    return np.array([np.linalg.norm(pose[c] - pose[p]) for c, p in layout.parent_first_bones])


def valid_frames(x: np.ndarray) -> np.ndarray:
    """``[N, T, M]`` mask of frames where a person has any non-zero joint."""
    return np.abs(x).sum(axis=(1, 3)) > 0


def normalize_bones(
    x: np.ndarray, layout: Layout, config: BoneNormalizeConfig | None = None
) -> np.ndarray:
    """Canonical-body version of ``x`` (``[N, 3, T, V, M]``), float32, same shape."""
    cfg = config or BoneNormalizeConfig()
    x = _check(x, layout)
    j = np.ascontiguousarray(x.transpose(0, 4, 2, 3, 1), dtype=np.float64)  # [N,M,T,V,3]
    if cfg.tempo:
        j = _resample_valid(j)
    valid = np.abs(j).sum(axis=(3, 4)) > 0  # [N,M,T]
    if cfg.smooth > 1:
        j = _smooth(j, valid, cfg.smooth)
    if cfg.view:
        j = _align_view(j, valid, layout)
    if cfg.bones or cfg.posture:
        j = _rebuild(j, valid, layout, cfg)
    j[~valid] = 0.0
    return j.transpose(0, 4, 2, 3, 1).astype(np.float32)


def bone_lengths(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Bone lengths ``[N, T, M, B]`` in ``Layout.parent_first_bones`` order, for checks and features."""
    x = _check(x, layout)
    order = layout.parent_first_bones
    child = [c for c, _ in order]
    parent = [p for _, p in order]
    d = x[:, :, :, child, :] - x[:, :, :, parent, :]  # [N,3,T,B,M]
    return np.linalg.norm(d, axis=1).transpose(0, 1, 3, 2)


def _check(x: np.ndarray, layout: Layout) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"skeleton array must be [N, 3, T, V, M], got shape {tuple(x.shape)}")
    if x.shape[3] != layout.num_joints:
        raise ValueError(
            f"skeleton array has {x.shape[3]} joints, layout {layout.name!r} has {layout.num_joints}"
        )
    if not np.isfinite(x).all():
        raise ValueError("skeleton array holds NaN or infinite values")
    return x


def _resample_valid(j: np.ndarray) -> np.ndarray:
    """Stretch the span of valid frames of each sequence over all T frames."""
    n, m, t = j.shape[:3]
    out = np.zeros_like(j)
    any_valid = np.abs(j).sum(axis=(1, 3, 4)) > 0  # [N,T] any person present
    for i in range(n):
        idx = np.flatnonzero(any_valid[i])
        if idx.size == 0:
            continue
        src = idx[0] + (idx[-1] - idx[0]) * np.linspace(0.0, 1.0, t)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, idx[-1])
        w = (src - lo)[None, :, None, None]
        out[i] = (1 - w) * j[i][:, lo] + w * j[i][:, hi]
        # a person absent in a source frame stays absent rather than half-blended
        present = np.abs(j[i]).sum(axis=(2, 3)) > 0  # [M,T]
        gone = ~(present[:, lo] & present[:, hi])
        out[i][gone] = 0.0
    return out


def _smooth(j: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
    """Moving average over valid frames only (padding does not pull joints to zero)."""
    t = j.shape[2]
    before, after = window // 2, window - 1 - window // 2

    def box(a: np.ndarray) -> np.ndarray:
        pad = [(0, 0)] * a.ndim
        pad[2] = (before, after)
        ap = np.pad(a, pad)
        return sum(ap[:, :, k : k + t] for k in range(window))

    w = valid.astype(np.float64)[..., None, None]
    num, den = box(j * w), box(w)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _joint(layout: Layout, *names: str) -> int | None:
    for n in names:
        if n in layout.joints:
            return layout.index(n)
    return None


def _align_view(j: np.ndarray, valid: np.ndarray, layout: Layout) -> np.ndarray:
    """Rotate each sequence into the body frame of its first person; root of frame 0 at 0."""
    left = _joint(layout, "hip_left", "shoulder_left")
    right = _joint(layout, "hip_right", "shoulder_right")
    top = _joint(layout, "shoulder_center", "neck", "spine", "head")
    root = layout.center
    out = j.copy()
    for i in range(j.shape[0]):
        person = int(np.argmax(valid[i].sum(axis=1)))  # the person seen the longest
        frames = np.flatnonzero(valid[i, person])
        if frames.size == 0:
            continue
        p = j[i, person, frames]  # [F,V,3]
        origin = p[0, root].copy()
        rot = np.eye(3)
        if left is not None and right is not None and top is not None:
            lateral = (p[:, left] - p[:, right]).mean(axis=0)
            up = (p[:, top] - p[:, root]).mean(axis=0)
            rot = _frame(lateral, up)
        out[i] = (j[i] - origin) @ rot.T
    return out


def _frame(lateral: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rows x (lateral), y (up), z = x cross y; identity if degenerate."""
    ny = np.linalg.norm(up)
    if ny < _EPS:
        return np.eye(3)
    y = up / ny
    x = lateral - (lateral @ y) * y
    nx = np.linalg.norm(x)
    if nx < _EPS:
        return np.eye(3)
    x = x / nx
    return np.stack([x, y, np.cross(x, y)])


def _rebuild(j: np.ndarray, valid: np.ndarray, layout: Layout, cfg: BoneNormalizeConfig) -> np.ndarray:
    """Forward kinematics with canonical lengths along the observed bone directions."""
    order = layout.parent_first_bones
    canon = canonical_pose(layout, cfg.unit)
    lengths = canonical_bone_lengths(layout, cfg.unit)
    child = np.array([c for c, _ in order])
    parent = np.array([p for _, p in order])
    vec = j[:, :, :, child] - j[:, :, :, parent]  # [N,M,T,B,3]
    norm = np.linalg.norm(vec, axis=-1, keepdims=True)
    rest = canon[child] - canon[parent]
    rest_dir = rest / np.maximum(np.linalg.norm(rest, axis=-1, keepdims=True), _EPS)
    unit = np.where(norm > _EPS, vec / np.maximum(norm, _EPS), rest_dir)
    if cfg.posture:
        unit = _to_rest_posture(unit, valid, rest_dir)
    if cfg.deadzone > 0:
        unit = _deadzone(unit, valid, cfg.deadzone)
    if not cfg.bones:  # posture only: keep the person's own lengths
        lengths_nmtb = norm[..., 0]
    else:
        lengths_nmtb = np.broadcast_to(lengths, norm.shape[:-1])
    root = j[:, :, :, layout.center].copy()  # [N,M,T,3]
    if cfg.root == "fixed":
        root[:] = 0.0
    elif cfg.root == "scaled" and cfg.bones:
        own = _median_valid(norm[..., 0].sum(axis=-1), valid)  # [N,M] body size
        scale = np.divide(lengths.sum(), own, out=np.ones_like(own), where=own > _EPS)
        root = root * scale[:, :, None, None]
    out = np.zeros_like(j)
    out[:, :, :, layout.center] = root
    for b, (c, p) in enumerate(order):
        out[:, :, :, c] = out[:, :, :, p] + lengths_nmtb[..., b, None] * unit[:, :, :, b]
    return out


def _median_valid(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median over valid frames of ``v [N,M,T]``; 0 where a person is never valid."""
    masked = np.where(valid, v, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: absent persons
        med = np.nanmedian(masked, axis=-1)
    return np.nan_to_num(med, nan=0.0)


def _start_directions(unit: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean bone directions ``[N,M,B,3]`` over the first eighth of each person's frames."""
    n, m = unit.shape[:2]
    start = np.zeros((n, m) + unit.shape[3:])
    for i in range(n):
        for k in range(m):
            frames = np.flatnonzero(valid[i, k])
            if frames.size:
                start[i, k] = unit[i, k, frames[: max(1, frames.size // 8)]].mean(axis=0)
    return start


def _deadzone(unit: np.ndarray, valid: np.ndarray, width: float) -> np.ndarray:
    """Shrink each bone's departure from its start direction by ``width``: sway, fidgeting
    and tremor (small) vanish, deliberate movements (large) stay."""
    start = _start_directions(unit, valid)[:, :, None]  # [N,M,1,B,3]
    dev = unit - start
    size = np.linalg.norm(dev, axis=-1, keepdims=True)
    kept = dev * (np.maximum(size - width, 0.0) / np.maximum(size, _EPS))
    moved = start + kept
    norm = np.linalg.norm(moved, axis=-1, keepdims=True)
    return np.where(norm > _EPS, moved / np.maximum(norm, _EPS), unit)


def _to_rest_posture(unit: np.ndarray, valid: np.ndarray, rest_dir: np.ndarray) -> np.ndarray:
    """Rotate each bone so its direction over the first frames becomes the rest direction."""
    n, m, t, b, _ = unit.shape
    out = unit.copy()
    for i in range(n):
        for k in range(m):
            frames = np.flatnonzero(valid[i, k])
            if frames.size == 0:
                continue
            head = frames[: max(1, frames.size // 8)]
            start = unit[i, k, head].mean(axis=0)  # [B,3]
            for bone in range(b):
                rot = _rotation_between(start[bone], rest_dir[bone])
                out[i, k, :, bone] = unit[i, k, :, bone] @ rot.T
    return out


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking direction ``a`` to direction ``b`` (Rodrigues)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < _EPS or nb < _EPS:
        return np.eye(3)
    a, b = a / na, b / nb
    v = np.cross(a, b)
    c = float(a @ b)
    s = np.linalg.norm(v)
    if s < _EPS:
        if c > 0:
            return np.eye(3)
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < _EPS:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * ((1 - c) / s**2)
