"""What the NTU RGB+D family of formats shares: class names and the sample name grammar.

NTU RGB+D names every sequence ``SsssCcccPpppRrrrAaaa`` (setup, camera, performer,
replication, action); pyskl's ``frame_dir`` and the lists behind CTR-GCN's ``.npz`` files
use the same names, so subject, camera and setup can be recovered from them wherever
they travel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The published action names; class names are the codes ``A001``... as the raw reader
# gives them, so that every NTU reader yields the same label space.
NTU120_ACTION_NAMES: tuple[str, ...] = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup",
    "throw", "sitting down", "standing up (from sitting position)", "clapping", "reading",
    "writing", "tear up paper", "wear jacket", "take off jacket", "wear a shoe",
    "take off a shoe", "wear on glasses", "take off glasses", "put on a hat/cap",
    "take off a hat/cap", "cheer up", "hand waving", "kicking something",
    "reach into pocket", "hopping (one foot jumping)", "jump up",
    "make a phone call/answer phone", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front (say stop)", "sneeze/cough",
    "staggering", "falling", "touch head (headache)", "touch chest (stomachache/heart pain)",
    "touch back (backache)", "touch neck (neckache)", "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm", "punching/slapping other person",
    "kicking other person", "pushing other person", "pat on back of other person",
    "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    # NTU RGB+D 120 adds A61-A120.
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball",
    "tennis bat swing", "juggling table tennis balls", "hush (quite)", "flick hair",
    "thumb up", "thumb down", "make ok sign", "make victory sign", "staple book",
    "counting money", "cutting nails", "cutting paper (using scissors)", "snapping fingers",
    "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper",
    "ball up paper", "play magic cube", "apply cream on face", "apply cream on hand back",
    "put on bag", "take off bag", "put something into a bag", "take something out of a bag",
    "open a box", "move heavy objects", "shake fist", "throw up cap/hat",
    "hands up (both hands)", "cross arms", "arm circles", "arm swings",
    "running on the spot", "butt kicks (kick backward)", "cross toe touch", "side kick",
    "yawn", "stretch oneself", "blow nose", "hit other person with something",
    "wield knife towards other person", "knock over other person (hit with body)",
    "grab other person's stuff", "shoot at other person with a gun", "step on foot",
    "high-five", "cheers and drink", "carry something with other person",
    "take a photo of other person", "follow other person",
    "whisper in other person's ear", "exchange things with other person",
    "support somebody with hand", "finger-guessing game (playing rock-paper-scissors)",
)
NTU60_ACTION_NAMES: tuple[str, ...] = NTU120_ACTION_NAMES[:60]

# NTU RGB+D 60 was recorded in setups 1-17 with actions 1-60; anything beyond is NTU-120.
NTU60_MAX_SETUP = 17
NTU60_MAX_ACTION = 60

_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


@dataclass(frozen=True)
class NtuName:
    """The parts of an ``SsssCcccPpppRrrrAaaa`` name, as integers (action is 1-based)."""

    setup: int
    camera: int
    subject: int
    replication: int
    action: int

    @property
    def in_ntu60(self) -> bool:
        return self.setup <= NTU60_MAX_SETUP and self.action <= NTU60_MAX_ACTION

    def meta(self) -> dict[str, Any]:
        """Metadata as the raw NTU reader records it, plus the camera as an integer."""
        return {
            "subject": str(self.subject),
            "view": str(self.camera),
            "setup": self.setup,
            "camera": self.camera,
            "replication": self.replication,
            "action": f"A{self.action:03d}",
        }


def parse_ntu_name(name: str) -> NtuName | None:
    """Parse a name such as ``S001C002P003R001A004`` (an extension or path is ignored).

    Returns ``None`` when the name does not follow the NTU grammar, so callers decide
    whether that is an error (the raw reader) or just unknown metadata (pyskl, npz).
    """
    stem = re.split(r"[\\/]", str(name))[-1].split(".")[0]
    match = _NTU_NAME.fullmatch(stem)
    if match is None:
        return None
    setup, camera, subject, replication, action = (int(g) for g in match.groups())
    return NtuName(setup, camera, subject, replication, action)


def ntu_classes(num_classes: int) -> list[str]:
    """Class names ``A001``... for NTU-60 or NTU-120 (label = action number - 1)."""
    if num_classes not in (60, 120):
        raise ValueError(f"NTU RGB+D has 60 or 120 classes, not {num_classes}")
    return [f"A{a:03d}" for a in range(1, num_classes + 1)]


def ntu_action_name(label: int) -> str:
    """The published name of an NTU class (0-based label), e.g. 0 -> ``drink water``."""
    return NTU120_ACTION_NAMES[label]


_VERSIONS = {"ntu60": 60, "ntu-60": 60, "ntu_60": 60, "ntu120": 120, "ntu-120": 120,
             "ntu_120": 120}


def resolve_ntu(dataset: str | None, inferred: int | None) -> tuple[str | None, int | None]:
    """The data set name and NTU version (60, 120 or ``None`` for non-NTU content).

    Every NTU variant is named ``ntu``, as the raw reader names it; ``ntu60``/``ntu120``
    fix the class count, ``ntu`` or nothing take the ``inferred`` one, and any other
    name marks the content as a data set of its own.
    """
    if dataset is None:
        return ("ntu", inferred) if inferred else (None, None)
    key = dataset.strip().lower()
    if key in _VERSIONS:
        return "ntu", _VERSIONS[key]
    if key == "ntu":
        return "ntu", inferred or 60
    return dataset, None
