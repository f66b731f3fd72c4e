"""Bodies for the synthetic generator: a rest pose, per-person proportions, forward kinematics.

The rest pose gives every canonical joint a position (metres, a 1.75 m adult standing
with arms hanging, hip centre at the origin, x to the person's right, y up, facing -z).
Any layout whose joints carry canonical names gets a kinematic tree from its bones and
centre joint; bone offsets are the rest-pose differences scaled by the person's segments.
"""

from __future__ import annotations

import numpy as np

from skeletons.layouts import Layout

REST_HEIGHT = 1.75

_MIDLINE = {
    "hip_center": (0.0, 0.0, 0.0),
    "spine": (0.0, 0.08, 0.0),
    "shoulder_center": (0.0, 0.50, 0.0),
    "neck": (0.0, 0.58, 0.0),
    "head": (0.0, 0.70, 0.0),
}
_RIGHT = {
    "shoulder": (0.18, 0.47, 0.0),
    "elbow": (0.22, 0.19, 0.0),
    "wrist": (0.24, -0.06, 0.0),
    "hand": (0.25, -0.14, 0.0),
    "hand_tip": (0.25, -0.22, 0.0),
    "thumb": (0.22, -0.16, -0.04),
    "hip": (0.09, -0.05, 0.0),
    "knee": (0.10, -0.48, 0.0),
    "ankle": (0.10, -0.88, 0.0),
    "foot": (0.10, -0.93, -0.11),
}


def _rest_positions() -> dict[str, np.ndarray]:
    pos = {k: np.array(v) for k, v in _MIDLINE.items()}
    for part, (x, y, z) in _RIGHT.items():
        pos[f"{part}_right"] = np.array((x, y, z))
        pos[f"{part}_left"] = np.array((-x, y, z))
    return pos


REST_POSITIONS: dict[str, np.ndarray] = _rest_positions()
CANONICAL_JOINTS: tuple[str, ...] = tuple(sorted(REST_POSITIONS))

# Which body segment scales the bone that ends in a joint (keyed by name without side).
SEGMENT_OF = {
    "spine": "torso", "shoulder_center": "torso", "neck": "head", "head": "head",
    "shoulder": "shoulders", "elbow": "upper_arm", "wrist": "forearm",
    "hand": "hand", "hand_tip": "hand", "thumb": "hand",
    "hip": "hips", "knee": "thigh", "ankle": "shin", "foot": "foot",
}
SEGMENTS = ("torso", "head", "shoulders", "upper_arm", "forearm", "hand", "hips", "thigh", "shin", "foot")


def _segment(joint: str) -> str:
    base = joint.removesuffix("_left").removesuffix("_right")
    return SEGMENT_OF.get(base, "torso")


class Body:
    """The kinematic tree of a layout: parents, traversal order and rest bone offsets."""

    def __init__(self, layout: Layout) -> None:
        unknown = [j for j in layout.joints if j not in REST_POSITIONS]
        if unknown:
            raise ValueError(
                f"layout {layout.name!r}: the synthetic body has no rest position for joint(s) "
                f"{', '.join(unknown)}; known: {', '.join(sorted(REST_POSITIONS))}"
            )
        self.layout = layout
        v = layout.num_joints
        self.parent = np.full(v, -1, dtype=np.int64)
        for child, parent in layout.directed_bones:
            self.parent[child] = parent
        self.order = [int(j) for j in np.argsort(layout.depth, kind="stable") if j != layout.center]
        rest = np.stack([REST_POSITIONS[j] for j in layout.joints])
        self.offsets = np.zeros((v, 3))
        for j in self.order:
            self.offsets[j] = rest[j] - rest[self.parent[j]]
        names = list(SEGMENTS)
        self.segment_index = np.array([names.index(_segment(j)) for j in layout.joints], dtype=np.int64)
        self.ground_joints = [i for i, j in enumerate(layout.joints) if j.startswith(("foot_", "ankle_"))]
        self.joint_index = {j: i for i, j in enumerate(layout.joints)}
        self.canonical_index = np.array([CANONICAL_JOINTS.index(j) for j in layout.joints], dtype=np.int64)

    def bone_offsets(self, segment_scale: np.ndarray) -> np.ndarray:
        """Rest offsets ``[..., V, 3]`` for persons with segment scales ``[..., len(SEGMENTS)]``."""
        return self.offsets * segment_scale[..., self.segment_index][..., None]

    def forward(self, rotations: np.ndarray, root: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Joint positions ``[N, T, V, 3]`` relative to the centre joint.

        ``rotations`` ``[V, N, T, 3, 3]`` (joint-major, so each joint's slice is contiguous)
        rotate each bone, indexed by its child joint, in its parent's frame; ``root``
        ``[N, T, 3, 3]`` orients the whole body and ``offsets`` ``[N, V, 3]`` are the
        person's bones.
        """
        glob = np.empty_like(rotations)
        pos = np.zeros(rotations.shape[:-1])
        off = np.moveaxis(offsets, 1, 0)[:, :, None, :, None]  # [V, N, 1, 3, 1]
        c = self.layout.center
        glob[c] = root @ rotations[c]
        for j in self.order:
            p = self.parent[j]
            glob[j] = glob[p] @ rotations[j]
            pos[j] = pos[p] + (glob[j] @ off[j])[..., 0]
        return np.moveaxis(pos, 0, 2)


def euler_matrices(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rz @ Ry @ Rx`` for angles ``[..., 3]`` (radians, x y z)."""
    cx, cy, cz = np.cos(angles[..., 0]), np.cos(angles[..., 1]), np.cos(angles[..., 2])
    sx, sy, sz = np.sin(angles[..., 0]), np.sin(angles[..., 1]), np.sin(angles[..., 2])
    m = np.empty(angles.shape[:-1] + (3, 3))
    m[..., 0, 0] = cz * cy
    m[..., 0, 1] = cz * sy * sx - sz * cx
    m[..., 0, 2] = cz * sy * cx + sz * sx
    m[..., 1, 0] = sz * cy
    m[..., 1, 1] = sz * sy * sx + cz * cx
    m[..., 1, 2] = sz * sy * cx - cz * sx
    m[..., 2, 0] = -sy
    m[..., 2, 1] = cy * sx
    m[..., 2, 2] = cy * cx
    return m


def rotation_y(deg: np.ndarray | float) -> np.ndarray:
    """Rotation about the vertical axis, ``[..., 3, 3]``."""
    a = np.radians(np.asarray(deg, dtype=np.float64))
    zeros = np.zeros(a.shape + (3,))
    zeros[..., 1] = a
    return euler_matrices(zeros)
