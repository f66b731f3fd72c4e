"""Synthetic skeleton actions: many people, many classes, any layout, with domain shifts.

Real skeleton data sets are small and each site's sensor differs. The generator gives
tests and simulations data with the same structure as the real sets: actions that are
learnable but not trivial, people whose body and style make them re-identifiable (so
privacy audits have something to find), child/adult and sex attributes, and
:class:`DomainShift` s (camera angle, noise, frame rate, dropped joints) that make one
site's recordings differ from another's. Everything follows from ``seed``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from skeletons.layouts import Layout, get_layout
from skeletons.sample import SkeletonDataset, SkeletonSample
from skeletons.synthetic_actions import AXES, ActionClass, action_classes
from skeletons.synthetic_body import (
    CANONICAL_JOINTS, REST_HEIGHT, SEGMENTS, Body, euler_matrices, rotation_y,
)

CAMERA_DISTANCE = 3.0  # metres from the person's standing spot
CAMERA_TARGET = np.array([0.0, 0.9, 0.0])  # point the camera looks at (world, metres)

# Streams of the seed sequence, so that adding a domain never changes the motions.
_SUBJECT, _MOTION, _DOMAIN, _STYLE = 1, 2, 3, 4


# Short field names accepted in mappings (scenario files).
_DOMAIN_ALIASES = {"noise": "noise_std", "frame_rate": "frame_rate_factor", "missing": "missing_joint_rate"}


@dataclass(frozen=True)
class DomainShift:
    """How one site's sensor sees the same motions differently.

    ``yaw`` turns the camera around the vertical axis through the person (degrees,
    positive towards the person's left), ``pitch`` raises it to look down (degrees); ``noise_std`` is Gaussian
    sensor noise in metres; ``frame_rate_factor`` scales the number of frames for the
    same motion; ``missing_joint_rate`` is the fraction of (frame, joint) readings lost
    (set to zero, as Kinect files do). ``name`` becomes the samples' ``view``.
    """

    yaw: float = 0.0
    pitch: float = 0.0
    noise_std: float = 0.0
    frame_rate_factor: float = 1.0
    missing_joint_rate: float = 0.0
    name: str = "default"

    def __post_init__(self) -> None:
        if not -90.0 <= self.pitch <= 90.0:
            raise ValueError(f"domain {self.name!r}: pitch={self.pitch} must lie in [-90, 90] degrees")
        if self.noise_std < 0:
            raise ValueError(f"domain {self.name!r}: noise_std={self.noise_std} must be >= 0")
        if not 0.05 <= self.frame_rate_factor <= 20:
            raise ValueError(f"domain {self.name!r}: frame_rate_factor={self.frame_rate_factor} must lie in [0.05, 20]")
        if not 0.0 <= self.missing_joint_rate < 1.0:
            raise ValueError(f"domain {self.name!r}: missing_joint_rate={self.missing_joint_rate} must lie in [0, 1)")

    @classmethod
    def from_value(cls, value: "DomainShift | Mapping[str, Any]") -> "DomainShift":
        """A domain from itself or from a mapping of its fields (as read from TOML/JSON)."""
        if isinstance(value, DomainShift):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"domain must be a DomainShift or a mapping of its fields, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known - set(_DOMAIN_ALIASES)
        if unknown:
            raise ValueError(
                f"domain: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        values = dict(value)
        for alias, field_name in _DOMAIN_ALIASES.items():
            if alias in values:
                if field_name in values:
                    raise ValueError(f"domain: give {field_name!r} or its short form {alias!r}, not both")
                values[field_name] = values.pop(alias)
        return cls(**values)

    def camera_rotation(self) -> np.ndarray:
        """World-to-camera rotation (applied to row vectors as ``p @ R``)."""
        yaw, pitch = np.radians(self.yaw), np.radians(self.pitch)
        return euler_matrices(np.array([0.0, yaw, 0.0])) @ euler_matrices(np.array([pitch, 0.0, 0.0]))


@dataclass(frozen=True)
class Subject:
    """A synthetic person: who they are, their body, and how they move."""

    id: str
    attributes: dict[str, Any]
    segment_scale: np.ndarray  # [len(SEGMENTS)], includes overall height
    amplitude: float  # scales every motion
    speed: float  # scales frequencies, shortens one-shot actions
    delay: float  # onset shift of actions (fraction of the sample)
    phase: float  # phase shift of periodic motions (cycles)
    posture: dict[str, tuple[float, float, float]]  # constant bone offsets (degrees, x y z)
    tremor: float  # degrees
    tremor_freq: float  # cycles per sample
    index: int = 0
    seed: int = 0

    def style(self, action: str, num_components: int) -> np.ndarray:
        """How strongly this person moves each part of ``action`` (their own way of doing it)."""
        key = [self.seed, _STYLE, self.index, zlib.crc32(action.encode())]
        return np.random.default_rng(key).lognormal(0.0, 0.15, num_components)


def make_subject(index: int, seed: int) -> Subject:
    """Person ``index`` (0-based) of the population drawn from ``seed``.

    Groups and sexes alternate so every population is balanced; the rest is drawn.
    """
    rng = np.random.default_rng([seed, _SUBJECT, index])
    child = index % 2 == 1
    female = (index // 2) % 2 == 0
    age = int(rng.integers(5, 10)) if child else int(rng.integers(19, 41))
    if child:
        height = 1.08 + 0.06 * (age - 5) + rng.normal(0, 0.04)
    else:
        height = rng.normal(1.64, 0.06) if female else rng.normal(1.77, 0.07)
    seg = rng.normal(1.0, 0.045, len(SEGMENTS))
    names = list(SEGMENTS)
    if child:
        seg[names.index("head")] *= 1.25
        for leg in ("thigh", "shin"):
            seg[names.index(leg)] *= 0.93
    if female:
        seg[names.index("shoulders")] *= 0.9
        seg[names.index("hips")] *= 1.08
    seg *= height / REST_HEIGHT
    sign = 1.0 if rng.random() < 0.5 else -1.0
    posture = {
        "spine": (rng.normal(-3, 4), rng.normal(0, 3), rng.normal(0, 3)),
        "head": (rng.normal(0, 7), rng.normal(0, 6), rng.normal(0, 4)),
        "elbow_right": (rng.normal(0, 5), 0.0, rng.uniform(3, 15)),
        "elbow_left": (rng.normal(0, 5), 0.0, -rng.uniform(3, 15)),
        "wrist_right": (rng.uniform(0, 25), 0.0, 0.0),
        "wrist_left": (rng.uniform(0, 25), 0.0, 0.0),
        "knee_right": (rng.uniform(0, 6), 0.0, sign * rng.uniform(0, 6)),
        "knee_left": (rng.uniform(0, 6), 0.0, -sign * rng.uniform(0, 6)),
        "ankle_right": (-rng.uniform(0, 10), 0.0, 0.0),
        "ankle_left": (-rng.uniform(0, 10), 0.0, 0.0),
    }
    return Subject(
        id=f"s{index + 1:02d}",
        attributes={
            "sex": "F" if female else "M",
            "age": age,
            "group": "child" if child else "adult",
            "handedness": "L" if rng.random() < 0.12 else "R",
        },
        segment_scale=seg,
        amplitude=float(rng.uniform(0.8, 1.2) * (1.08 if child else 1.0)),
        speed=float(rng.uniform(0.85, 1.2) * (1.1 if child else 1.0)),
        delay=float(rng.uniform(-0.05, 0.08)),
        phase=float(rng.uniform(-0.15, 0.15)),
        posture=posture,
        tremor=float(rng.uniform(1.5, 3.5) if child else rng.uniform(0.3, 1.5)),
        tremor_freq=float(rng.uniform(6, 12)),
        index=index,
        seed=seed,
    )


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _gate(u: np.ndarray, start: np.ndarray, end: np.ndarray, ramp: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 -> 0 window over ``[start, end]`` with ramps of ``ramp``; ``u`` ``[T]``."""
    return _smoothstep((u - start[:, None]) / ramp[:, None]) * _smoothstep((end[:, None] - u) / ramp[:, None])


def _waveform(kind: str, u: np.ndarray, start: np.ndarray, cycles: np.ndarray, phase: np.ndarray) -> np.ndarray:
    if kind == "pulse":
        return np.ones((len(start), len(u)))
    arg = 2 * np.pi * (cycles[:, None] * (u - start[:, None]) + phase[:, None])
    if kind == "osc":
        return np.sin(arg)
    if kind == "osc_pos":
        return 0.5 * (1 - np.cos(arg))
    return np.maximum(np.sin(arg), 0.0)  # bounce


@dataclass
class _Motions:
    """Bone angles (radians) ``[N, T, V, 3]`` and lift off the ground (metres) ``[N, T]``."""

    angles: np.ndarray
    lift: np.ndarray


def _animate(action: ActionClass, subjects: list[Subject], body: Body, num_frames: int,
             rng: np.random.Generator) -> _Motions:
    """Joint angles of ``action`` performed once by each of ``subjects``."""
    n, t, v = len(subjects), num_frames, body.layout.num_joints
    u = np.linspace(0.0, 1.0, t)
    style = np.stack([s.style(action.name, len(action.components)) for s in subjects])
    amp = np.array([s.amplitude for s in subjects]) * rng.normal(1.0, 0.08, n)
    speed = np.array([s.speed for s in subjects]) * rng.normal(1.0, 0.1, n)
    span = (0.8 if action.periodic else 0.55) / speed
    start = np.clip(rng.uniform(0.03, 0.25, n) + np.array([s.delay for s in subjects]), 0.02, None)
    end = np.minimum(start + span, 0.97)
    phase = np.array([s.phase for s in subjects]) + rng.normal(0.0, 0.05, n)
    angles = np.zeros((n, t, v, 3))
    lift = np.zeros((n, t))
    for c, comp in enumerate(action.components):
        lo = start + comp.window[0] * (end - start)
        hi = start + comp.window[1] * (end - start)
        ramp = np.minimum(0.1, 0.35 * (hi - lo))
        shape = _gate(u, lo, hi, ramp) * _waveform(comp.wave, u, lo, comp.freq * speed, phase + comp.phase)
        size = comp.amplitude * amp * rng.normal(1.0, 0.1, n) * _hand_factor(comp.bone, subjects) * style[:, c]
        signal = size[:, None] * shape
        if comp.axis == "lift":
            lift += signal
        elif comp.bone in body.joint_index:
            angles[:, :, body.joint_index[comp.bone], AXES[comp.axis]] += np.radians(signal)
    for i, s in enumerate(subjects):
        for bone, xyz in s.posture.items():
            if bone in body.joint_index:
                angles[i, :, body.joint_index[bone]] += np.radians(xyz)
    _add_tremor(angles, subjects, body, u, rng)
    _add_fidget(angles, body, u, rng)
    return _Motions(angles, lift)


def _add_fidget(angles: np.ndarray, body: Body, u: np.ndarray, rng: np.random.Generator,
                degrees: float = 5.0, knots: int = 5) -> None:
    """Slow, random drift of every bone: no two performances are alike.

    A smooth curve through random values at a few knots (Gaussian bumps), drawn for
    every canonical joint so that a motion is the same in every layout.
    """
    n, t, v, _ = angles.shape
    centres = np.linspace(0.0, 1.0, knots)
    basis = np.exp(-0.5 * ((u[:, None] - centres[None]) * (knots - 1) / 0.8) ** 2)  # [T, K]
    basis /= basis.sum(axis=1, keepdims=True)
    values = rng.normal(0.0, np.radians(degrees), (n, knots, len(CANONICAL_JOINTS), 3))
    values = values[:, :, body.canonical_index].reshape(n, knots, v * 3)
    angles += (basis @ values).reshape(n, t, v, 3)


def _hand_factor(bone: str, subjects: list[Subject]) -> np.ndarray:
    """People move their dominant side a little more."""
    side = "L" if bone.endswith("_left") else "R" if bone.endswith("_right") else None
    return np.array([1.1 if s.attributes["handedness"] == side else 1.0 for s in subjects])


def _add_tremor(angles: np.ndarray, subjects: list[Subject], body: Body, u: np.ndarray,
                rng: np.random.Generator) -> None:
    joints = [body.joint_index[j] for j in ("elbow_right", "elbow_left", "wrist_right", "wrist_left", "head")
              if j in body.joint_index]
    size = np.radians([s.tremor for s in subjects])
    freq = np.array([s.tremor_freq for s in subjects])
    for j in joints:
        for axis in (0, 2):
            ph = rng.uniform(0, 1, len(subjects))
            angles[:, :, j, axis] += size[:, None] * np.sin(2 * np.pi * (freq[:, None] * u + ph[:, None]))


def _pose(motions: _Motions, subjects: list[Subject], body: Body, rng: np.random.Generator) -> np.ndarray:
    """World positions ``[N, T, V, 3]``: feet on the ground, person near the world origin."""
    n = len(subjects)
    offsets = body.bone_offsets(np.stack([s.segment_scale for s in subjects]))
    facing = rotation_y(rng.normal(0.0, 6.0, n))[:, None]
    rotations = euler_matrices(np.ascontiguousarray(np.moveaxis(motions.angles, 2, 0)))  # [V, N, T, 3, 3]
    pos = body.forward(rotations, np.broadcast_to(facing, rotations.shape[1:3] + (3, 3)), offsets)
    ground = body.ground_joints or list(range(pos.shape[2]))
    floor = pos[:, :, ground, 1].min(axis=2)
    pos[..., 1] += (motions.lift - floor)[:, :, None]
    spot = np.stack([rng.uniform(-0.4, 0.4, n), np.zeros(n), rng.uniform(-0.4, 0.4, n)], axis=1)
    return pos + spot[:, None, None, :]


def _record(world: np.ndarray, domain: DomainShift, rng: np.random.Generator) -> list[np.ndarray]:
    """What the domain's sensor records of world positions ``[N, T, V, 3]``: ``[T', V, 3]`` each."""
    cam = (world - CAMERA_TARGET) @ domain.camera_rotation() + np.array([0.0, 0.0, CAMERA_DISTANCE])
    t = cam.shape[1]
    t_new = max(2, int(round(t * domain.frame_rate_factor)))
    if t_new != t:
        cam = _resample(cam, t_new)
    if domain.noise_std > 0:  # per recorded frame, whatever the frame rate
        cam = cam + rng.normal(0.0, domain.noise_std, cam.shape)
    if domain.missing_joint_rate > 0:
        lost = rng.random(cam.shape[:3]) < domain.missing_joint_rate
        cam[lost] = 0.0
    return list(cam.astype(np.float32))


def _resample(x: np.ndarray, t_new: int) -> np.ndarray:
    """Linear interpolation of ``[N, T, ...]`` along time to ``t_new`` frames."""
    pos = np.linspace(0, x.shape[1] - 1, t_new)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[1] - 1)
    w = (pos - lo).reshape((1, t_new) + (1,) * (x.ndim - 2))
    return x[:, lo] * (1 - w) + x[:, hi] * w


def _domains(domain: Any) -> list[DomainShift | None]:
    if domain is None:
        return [None]
    if isinstance(domain, (DomainShift, Mapping)):
        return [DomainShift.from_value(domain)]
    if isinstance(domain, Sequence) and not isinstance(domain, str):
        result = [DomainShift.from_value(d) for d in domain]
        names = [d.name for d in result]
        if not result or len(set(names)) != len(names):
            raise ValueError(f"domains need distinct names and at least one entry, got {names}")
        return result
    raise ValueError(f"domain must be a DomainShift, a mapping of its fields or a list of them, got {domain!r}")


def generate_synthetic(
    num_classes: int = 8,
    num_subjects: int = 10,
    samples_per_class_subject: int = 4,
    num_frames: int = 52,
    layout: str | Layout = "kinect-v1",
    domain: DomainShift | Mapping[str, Any] | Sequence[DomainShift | Mapping[str, Any]] | None = None,
    seed: int = 0,
    name: str = "synthetic",
    subject_offset: int = 0,
) -> SkeletonDataset:
    """A synthetic data set: every subject performs every class ``samples_per_class_subject`` times.

    With a list of domains every performance is recorded by each domain (like a
    multi-camera set-up), so a data set can be partitioned by ``view``. Joints are
    ``float32 [T, 1, V, 3]`` in camera coordinates (metres); ``T`` is ``num_frames``
    scaled by the domain's frame-rate factor. Without a domain ``view`` is None.
    Subjects are persons ``subject_offset + 1 ...`` of the population of ``seed``: sites
    generated with different offsets hold different people.
    """
    for field_name, value, low in (("num_classes", num_classes, 1), ("num_subjects", num_subjects, 1),
                                   ("samples_per_class_subject", samples_per_class_subject, 1),
                                   ("num_frames", num_frames, 4), ("subject_offset", subject_offset, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"generate_synthetic: {field_name}={value!r} must be an integer >= {low}")
    lay = get_layout(layout) if isinstance(layout, str) else layout
    body = Body(lay)
    actions = action_classes(num_classes)
    domains = _domains(domain)
    subjects = [make_subject(subject_offset + i, seed) for i in range(num_subjects)]
    reps = samples_per_class_subject
    performers = [s for s in subjects for _ in range(reps)]
    recorded: dict[tuple[int, int], list[np.ndarray]] = {}
    for k, action in enumerate(actions):
        motion_rng = np.random.default_rng([seed, _MOTION, k, subject_offset])
        motions = _animate(action, performers, body, num_frames, motion_rng)
        world = _pose(motions, performers, body, motion_rng)
        for d, dom in enumerate(domains):
            dom_rng = np.random.default_rng([seed, _DOMAIN, d, k, subject_offset])
            recorded[(k, d)] = _record(world, dom or DomainShift(), dom_rng)
    samples = []
    for d, dom in enumerate(domains):
        for si, subj in enumerate(subjects):
            for k, action in enumerate(actions):
                for r in range(reps):
                    joints = recorded[(k, d)][si * reps + r][:, None]
                    view = None if dom is None else dom.name
                    samples.append(SkeletonSample(joints=joints, label=k, meta={
                        "dataset": name,
                        "subject": subj.id,
                        "view": view,
                        "source": f"synthetic:{name}/{action.name}/{subj.id}/r{r}" + (f"/{view}" if view else ""),
                        "repetition": r,
                        "attributes": dict(subj.attributes),
                    }))
    return SkeletonDataset(name=name, layout=lay, classes=[a.name for a in actions], samples=samples)
