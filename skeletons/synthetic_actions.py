"""The action catalogue of the synthetic generator: each class as joint-angle components.

An action is a list of :class:`Component` s. A component drives one rotation axis of one
bone (named by the bone's child joint, e.g. ``elbow_right`` is the upper arm, rotated
at the shoulder) or lifts the whole body off the ground (``root``/``lift``), following a
waveform over the sample's active window. The body frame is x to the person's right,
y up, z backwards (the person faces -z): a positive x rotation swings a hanging limb
forwards, a positive z rotation swings it towards +x.

Classes are defined once, independent of any seed, so class ``k`` is the same motion
for every ``num_classes``; classes beyond the base set pair an arm action with a leg or
trunk action that uses other bones.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

AXES = {"x": 0, "y": 1, "z": 2, "lift": 3}
WAVES = ("pulse", "osc", "osc_pos", "bounce")


@dataclass(frozen=True)
class Component:
    """One driven degree of freedom: ``amplitude`` in degrees (metres for ``lift``)."""

    bone: str
    axis: str
    amplitude: float
    wave: str = "pulse"
    freq: float = 1.0  # cycles per unit of sample time
    phase: float = 0.0  # fraction of a cycle
    window: tuple[float, float] = (0.0, 1.0)  # part of the active window it spans

    def __post_init__(self) -> None:
        if self.axis not in AXES or self.wave not in WAVES:
            raise ValueError(f"component {self}: unknown axis or wave")


@dataclass(frozen=True)
class ActionClass:
    """A named action; ``periodic`` actions span most of the sample, one-shot ones less."""

    name: str
    components: tuple[Component, ...]
    periodic: bool = False

    @property
    def bones(self) -> frozenset[str]:
        return frozenset(c.bone for c in self.components)


def _c(bone: str, axis: str, amplitude: float, wave: str = "pulse", freq: float = 1.0,
       phase: float = 0.0, window: tuple[float, float] = (0.0, 1.0)) -> Component:
    return Component(bone, axis, amplitude, wave, freq, phase, window)


def _m(side: str) -> float:
    """Sign of lateral (y and z) rotations: the left side mirrors the right."""
    return 1.0 if side == "right" else -1.0


def _other(side: str) -> str:
    return "left" if side == "right" else "right"


# Bones by the joint that ends them.
def _upper_arm(s: str) -> str:
    return f"elbow_{s}"


def _forearm(s: str) -> str:
    return f"wrist_{s}"


def _thigh(s: str) -> str:
    return f"knee_{s}"


def _shin(s: str) -> str:
    return f"ankle_{s}"


TRUNK, HEAD, ROOT = "spine", "head", "root"
SIDES = ("right", "left")


def _hands_on_hips() -> list[Component]:
    return [c for s in SIDES for c in (_c(_upper_arm(s), "z", 40 * _m(s)), _c(_forearm(s), "z", -100 * _m(s)))]


def raise_arm(s: str) -> ActionClass:
    return ActionClass(f"raise_arm_{s}", (_c(_upper_arm(s), "x", 160),))


def wave(s: str) -> ActionClass:
    return ActionClass(f"wave_{s}", (
        _c(_upper_arm(s), "z", 85 * _m(s)), _c(_upper_arm(s), "x", 15),
        _c(_forearm(s), "z", 95 * _m(s)), _c(_forearm(s), "z", 30 * _m(s), "osc", 4.0),
    ), periodic=True)


def kick(s: str) -> ActionClass:
    return ActionClass(f"kick_{s}", (
        _c(_shin(s), "x", -70, window=(0.0, 0.5)), _c(_thigh(s), "x", 75, window=(0.35, 0.7)),
        _c(TRUNK, "x", 10, window=(0.35, 0.7)), _c(_upper_arm(_other(s)), "z", 25 * _m(_other(s))),
    ))


def arm_to_side(s: str) -> ActionClass:
    return ActionClass(f"arm_to_side_{s}", (_c(_upper_arm(s), "z", 90 * _m(s)),))


def punch(s: str) -> ActionClass:
    return ActionClass(f"punch_{s}", (
        _c(_upper_arm(s), "x", 85), _c(_forearm(s), "x", 100),
        _c(_forearm(s), "x", -95, "osc_pos", 3.0), _c(TRUNK, "y", 15 * _m(s), "osc_pos", 3.0),
    ), periodic=True)


def throw(s: str) -> ActionClass:
    return ActionClass(f"throw_{s}", (
        _c(_upper_arm(s), "x", -50, window=(0.0, 0.45)), _c(_upper_arm(s), "z", 60 * _m(s), window=(0.0, 0.5)),
        _c(_forearm(s), "x", 100, window=(0.0, 0.55)), _c(_upper_arm(s), "x", 150, window=(0.4, 0.8)),
        _c(TRUNK, "y", -25 * _m(s), window=(0.0, 0.45)), _c(TRUNK, "y", 25 * _m(s), window=(0.4, 0.85)),
    ))


def leg_to_side(s: str) -> ActionClass:
    return ActionClass(f"leg_to_side_{s}", (_c(_thigh(s), "z", 40 * _m(s)), _c(TRUNK, "z", 10 * _m(s))))


def knee_lift(s: str) -> ActionClass:
    return ActionClass(f"knee_lift_{s}", (_c(_thigh(s), "x", 65), _c(_shin(s), "x", -95)))


def lean(s: str) -> ActionClass:
    return ActionClass(f"lean_{s}", tuple(_hands_on_hips()) + (_c(TRUNK, "z", -30 * _m(s)),))


def draw_circle(s: str) -> ActionClass:
    return ActionClass(f"draw_circle_{s}", (
        _c(_upper_arm(s), "x", 70), _c(_upper_arm(s), "x", 25, "osc", 2.0),
        _c(_upper_arm(s), "y", 25 * _m(s), "osc", 2.0, 0.25), _c(_forearm(s), "x", 20),
    ), periodic=True)


def point(s: str) -> ActionClass:
    return ActionClass(f"point_{s}", (_c(_upper_arm(s), "x", 90), _c(_upper_arm(s), "y", 10 * _m(s))), periodic=True)


def stop_gesture(s: str) -> ActionClass:
    return ActionClass(f"stop_gesture_{s}", (_c(_upper_arm(s), "x", 70), _c(_forearm(s), "x", 85)))


def come_here(s: str) -> ActionClass:
    return ActionClass(f"come_here_{s}", (
        _c(_upper_arm(s), "x", 55), _c(_forearm(s), "x", 40), _c(_forearm(s), "x", 55, "osc_pos", 4.0),
    ), periodic=True)


def swipe(s: str) -> ActionClass:
    return ActionClass(f"swipe_{s}", (
        _c(_upper_arm(s), "x", 80), _c(_upper_arm(s), "y", -45 * _m(s), window=(0.0, 0.5)),
        _c(_upper_arm(s), "y", 55 * _m(s), window=(0.4, 1.0)),
    ))


def _both(make) -> tuple[Component, ...]:
    return tuple(c for s in SIDES for c in make(s))


def bow() -> ActionClass:
    return ActionClass("bow", (_c(TRUNK, "x", -55), _c(HEAD, "x", -15)))


def jump() -> ActionClass:
    return ActionClass("jump", (
        _c(ROOT, "lift", 0.25, "bounce", 3.0), _c(TRUNK, "x", -20, "bounce", 3.0, 0.5),
    ) + _both(lambda s: (
        _c(_thigh(s), "x", 45, "bounce", 3.0, 0.5), _c(_shin(s), "x", -80, "bounce", 3.0, 0.5),
        _c(_upper_arm(s), "x", 60, "osc", 3.0),
    )), periodic=True)


def squat() -> ActionClass:
    return ActionClass("squat", (_c(TRUNK, "x", -30, "osc_pos", 2.0),) + _both(lambda s: (
        _c(_thigh(s), "x", 85, "osc_pos", 2.0), _c(_shin(s), "x", -110, "osc_pos", 2.0),
        _c(_upper_arm(s), "x", 80, "osc_pos", 2.0),
    )), periodic=True)


def twist() -> ActionClass:
    return ActionClass("twist", tuple(_hands_on_hips()) + (_c(TRUNK, "y", 40, "osc", 2.0),), periodic=True)


def _stepping(freq: float, hip: float, knee: float, arm: float, elbow: float, lift: float) -> tuple[Component, ...]:
    comps = [_c(ROOT, "lift", lift, "bounce", 2 * freq)] if lift else []
    for s, ph in (("left", 0.0), ("right", 0.5)):
        comps += [
            _c(_thigh(s), "x", hip, "osc_pos", freq, ph), _c(_shin(s), "x", -knee, "osc_pos", freq, ph),
            _c(_upper_arm(s), "x", arm, "osc", freq, 0.5 - ph),
        ]
        if elbow:
            comps.append(_c(_forearm(s), "x", elbow))
    return tuple(comps)


def walk_in_place() -> ActionClass:
    return ActionClass("walk_in_place", _stepping(3.0, 45, 70, 25, 0, 0.0), periodic=True)


def run_in_place() -> ActionClass:
    return ActionClass("run_in_place", _stepping(5.0, 60, 100, 40, 90, 0.05), periodic=True)


def clap() -> ActionClass:
    return ActionClass("clap", _both(lambda s: (
        _c(_upper_arm(s), "x", 85), _c(_upper_arm(s), "y", -40 * _m(s), "osc_pos", 4.0),
    )), periodic=True)


def jumping_jacks() -> ActionClass:
    return ActionClass("jumping_jacks", (_c(ROOT, "lift", 0.08, "bounce", 8.0),) + _both(lambda s: (
        _c(_upper_arm(s), "z", 150 * _m(s), "osc_pos", 4.0), _c(_thigh(s), "z", 20 * _m(s), "osc_pos", 4.0),
    )), periodic=True)


def touch_toes() -> ActionClass:
    return ActionClass("touch_toes", (_c(TRUNK, "x", -100), _c(HEAD, "x", -10)) + _both(
        lambda s: (_c(_upper_arm(s), "x", 40),)
    ))


def swim() -> ActionClass:
    return ActionClass("swim", _both(lambda s: (
        _c(_upper_arm(s), "x", 90), _c(_upper_arm(s), "x", 70, "osc", 3.0, 0.0 if s == "right" else 0.5),
        _c(_upper_arm(s), "z", 30 * _m(s), "osc", 3.0, 0.25 if s == "right" else 0.75),
    )), periodic=True)


def fly_like_a_bird() -> ActionClass:
    return ActionClass("fly_like_a_bird", _both(lambda s: (
        _c(_upper_arm(s), "z", 80 * _m(s)), _c(_upper_arm(s), "z", 30 * _m(s), "osc", 4.0),
    )), periodic=True)


def airplane() -> ActionClass:
    return ActionClass("airplane", (_c(TRUNK, "z", 20, "osc", 1.5),) + _both(
        lambda s: (_c(_upper_arm(s), "z", 90 * _m(s)),)
    ), periodic=True)


def nod() -> ActionClass:
    return ActionClass("nod", (_c(HEAD, "x", -30, "osc_pos", 3.0), _c(TRUNK, "x", -5)), periodic=True)


def shake_head() -> ActionClass:
    return ActionClass("shake_head", (_c(HEAD, "y", 45, "osc", 3.0),), periodic=True)


def _base_classes() -> list[ActionClass]:
    """The base set; the first eight are the most distinct, for small ``num_classes``."""
    return [
        raise_arm("right"), wave("right"), kick("right"), bow(), jump(), squat(), twist(), walk_in_place(),
        raise_arm("left"), wave("left"), kick("left"), arm_to_side("right"), arm_to_side("left"),
        clap(), jumping_jacks(), punch("right"), punch("left"), throw("right"), throw("left"),
        leg_to_side("right"), leg_to_side("left"), knee_lift("right"), knee_lift("left"),
        lean("right"), lean("left"), touch_toes(), run_in_place(), swim(), fly_like_a_bird(), airplane(),
        draw_circle("right"), draw_circle("left"), nod(), shake_head(), point("right"), point("left"),
        stop_gesture("right"), come_here("right"), swipe("right"), swipe("left"),
    ]


def _combined(arm: ActionClass, body: ActionClass) -> ActionClass:
    return ActionClass(f"{arm.name}+{body.name}", arm.components + body.components, periodic=body.periodic)


def _catalogue() -> tuple[ActionClass, ...]:
    base = _base_classes()
    arms = {"elbow_right", "elbow_left", "wrist_right", "wrist_left"}
    arm_only = [a for a in base if a.bones <= arms]
    body_only = [a for a in base if not (a.bones & arms)]
    pairs = [_combined(a, b) for a, b in product(arm_only, body_only)]
    order = np.random.default_rng(20240917).permutation(len(pairs))  # fixed: class k never changes
    return tuple(base) + tuple(pairs[i] for i in order)


CATALOGUE: tuple[ActionClass, ...] = _catalogue()
MAX_CLASSES = len(CATALOGUE)


def action_classes(num_classes: int) -> tuple[ActionClass, ...]:
    """The first ``num_classes`` actions of the catalogue."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: the synthetic catalogue has 1 to {MAX_CLASSES} classes")
    return CATALOGUE[:num_classes]
