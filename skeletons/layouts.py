"""Joint layouts: names, bones, centre joint, GCN adjacency and cross-layout mapping.

Joints carry canonical names shared by every layout (``hip_center``, ``shoulder_left``...),
so a sample recorded with one sensor can be mapped onto another layout by name. That is
what lets sites with different sensors join one federation in a common layout.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np

_LIMBS_V1 = (
    "shoulder_left", "elbow_left", "wrist_left", "hand_left",
    "shoulder_right", "elbow_right", "wrist_right", "hand_right",
    "hip_left", "knee_left", "ankle_left", "foot_left",
    "hip_right", "knee_right", "ankle_right", "foot_right",
)

# Bones as name pairs; direction does not matter, it is derived from the centre joint.
_BONES_V1 = (
    ("hip_center", "spine"), ("spine", "shoulder_center"), ("shoulder_center", "head"),
    ("shoulder_center", "shoulder_left"), ("shoulder_left", "elbow_left"),
    ("elbow_left", "wrist_left"), ("wrist_left", "hand_left"),
    ("shoulder_center", "shoulder_right"), ("shoulder_right", "elbow_right"),
    ("elbow_right", "wrist_right"), ("wrist_right", "hand_right"),
    ("hip_center", "hip_left"), ("hip_left", "knee_left"), ("knee_left", "ankle_left"),
    ("ankle_left", "foot_left"),
    ("hip_center", "hip_right"), ("hip_right", "knee_right"), ("knee_right", "ankle_right"),
    ("ankle_right", "foot_right"),
)

_BONES_NTU = tuple(b for b in _BONES_V1 if b != ("shoulder_center", "head")) + (
    ("shoulder_center", "neck"), ("neck", "head"),
    ("hand_left", "hand_tip_left"), ("hand_left", "thumb_left"),
    ("hand_right", "hand_tip_right"), ("hand_right", "thumb_right"),
)


@dataclass(frozen=True)
class Layout:
    """A skeleton layout: ordered joint names, bones between them, and the centre joint."""

    name: str
    joints: tuple[str, ...]
    bone_names: tuple[tuple[str, str], ...]
    center_joint: str = "hip_center"

    def __post_init__(self) -> None:
        known = set(self.joints)
        if len(known) != len(self.joints):
            raise ValueError(f"layout {self.name!r}: duplicate joint names")
        for a, b in self.bone_names:
            if a not in known or b not in known:
                raise ValueError(f"layout {self.name!r}: bone ({a}, {b}) names an unknown joint")
        if self.center_joint not in known:
            raise ValueError(f"layout {self.name!r}: unknown centre joint {self.center_joint!r}")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def center(self) -> int:
        return self.index(self.center_joint)

    def index(self, joint: str) -> int:
        try:
            return self.joints.index(joint)
        except ValueError:
            raise KeyError(f"layout {self.name!r} has no joint {joint!r}") from None

    @cached_property
    def depth(self) -> np.ndarray:
        """Hop distance of every joint from the centre joint (BFS over bones)."""
        neighbours: dict[int, list[int]] = {i: [] for i in range(self.num_joints)}
        for a, b in self.bones:
            neighbours[a].append(b)
            neighbours[b].append(a)
        dist = np.full(self.num_joints, -1, dtype=np.int64)
        dist[self.center] = 0
        queue = deque([self.center])
        while queue:
            j = queue.popleft()
            for n in neighbours[j]:
                if dist[n] < 0:
                    dist[n] = dist[j] + 1
                    queue.append(n)
        if (dist < 0).any():
            raise ValueError(f"layout {self.name!r}: joints not connected to the centre")
        return dist

    @cached_property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """Bones as index pairs, in the order they were declared."""
        return tuple((self.index(a), self.index(b)) for a, b in self.bone_names)

    @cached_property
    def directed_bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) pairs oriented towards the centre joint."""
        d = self.depth
        return tuple((a, b) if d[a] > d[b] else (b, a) for a, b in self.bones)

    @cached_property
    def parent_first_bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) bones sorted so that every parent is placed before its child."""
        d = self.depth
        return tuple(sorted(self.directed_bones, key=lambda b: (d[b[0]], b[0])))

    def adjacency(self) -> np.ndarray:
        """Spatial partitions for a GCN, float32 ``[3, V, V]``: self, inward, outward.

        Inward edges point from a joint to its parent (towards the centre), outward the
        reverse; each partition is normalized by its in-degree (columns sum to one).
        """
        v = self.num_joints
        inward = np.zeros((v, v), dtype=np.float32)
        for child, parent in self.directed_bones:
            inward[parent, child] = 1.0  # row = receiving joint, column = sending joint
        outward = inward.T.copy()
        return np.stack([np.eye(v, dtype=np.float32), _normalize(inward), _normalize(outward)])


def _normalize(a: np.ndarray) -> np.ndarray:
    """Divide each row by its degree so that messages are averaged, not summed."""
    deg = a.sum(axis=1, keepdims=True)
    return np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)


KINECT_V1 = Layout(
    name="kinect-v1",
    joints=("hip_center", "spine", "shoulder_center", "head") + _LIMBS_V1,
    bone_names=_BONES_V1,
)

MSR_ACTION3D = Layout(
    name="msr-action3d",
    joints=(
        "shoulder_left", "shoulder_right", "shoulder_center", "spine", "hip_left",
        "hip_right", "hip_center", "elbow_left", "elbow_right", "wrist_left",
        "wrist_right", "hand_left", "hand_right", "knee_left", "knee_right",
        "ankle_left", "ankle_right", "foot_left", "foot_right", "head",
    ),
    bone_names=_BONES_V1,
)

NTU25 = Layout(
    name="ntu25",
    joints=("hip_center", "spine", "neck", "head") + _LIMBS_V1 + (
        "shoulder_center", "hand_tip_left", "thumb_left", "hand_tip_right", "thumb_right",
    ),
    bone_names=_BONES_NTU,
)

LAYOUTS: dict[str, Layout] = {l.name: l for l in (KINECT_V1, MSR_ACTION3D, NTU25)}


def get_layout(name: str) -> Layout:
    """Look a layout up by name, with the known names in the error."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(sorted(LAYOUTS))}") from None


def joint_mapping(source: Layout, target: Layout) -> np.ndarray:
    """Index into ``source`` for each joint of ``target``; every target joint must exist."""
    missing = [j for j in target.joints if j not in source.joints]
    if missing:
        raise ValueError(
            f"cannot map layout {source.name!r} onto {target.name!r}: missing {', '.join(missing)}"
        )
    return np.array([source.index(j) for j in target.joints], dtype=np.int64)


def map_layout(joints: np.ndarray, source: Layout, target: Layout) -> np.ndarray:
    """Re-order (and drop) the joint axis of ``[..., V, 3]`` from ``source`` to ``target``."""
    if joints.shape[-2] != source.num_joints:
        raise ValueError(
            f"array has {joints.shape[-2]} joints, layout {source.name!r} has {source.num_joints}"
        )
    if source is target:
        return joints
    return joints[..., joint_mapping(source, target), :]
