"""Heads shared by the sites that have one label set (run option ``group-heads``).

Under a policy that keeps the classifier head personal (sites with different label
sets), sites whose label lists are identical, in the same order, can still average
their heads with each other. A site sends its head under keys tagged with its label
group, ``label-group.<tag>.<parameter>``; the server averages each group's keys over
the replies that carry them and keeps the others' last values. A site names its group
(``SITE_KEY`` in its site record) when asked before round 1 and in every reply, so the
server knows who belongs where: it sends each site it knows only its own group's head
(:func:`for_group`) and the number of its peers (``PEERS_KEY``). A site without peers
keeps its head at home, and the server keeps no head of a group of one. Under DP-SGD the average
shares out the noise of each site's head updates among the sites of its group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TypeVar

from models.roles import parameter_kind

PREFIX = "label-group."
SITE_KEY = "label-group"  # in a reply's site record: the site's group tag
PEERS_KEY = "label-group-peers"  # in a message's config: how many other sites share the group
V = TypeVar("V")


def label_group(classes: Sequence[str]) -> str:
    """A short tag that is equal for two sites exactly when their ordered label lists are."""
    return hashlib.sha256("\n".join(classes).encode()).hexdigest()[:12]


def group_key(tag: str, name: str) -> str:
    return f"{PREFIX}{tag}.{name}"


def is_group_key(key: str) -> bool:
    return key.startswith(PREFIX)


def group_of(key: str) -> str:
    """The tag of a group key (``label-group.<tag>.<parameter>``)."""
    return key[len(PREFIX):].split(".", 1)[0]


def for_group(arrays: Mapping[str, V], tag: str | None) -> dict[str, V]:
    """``arrays`` without the heads of groups other than ``tag``: what one site may see
    (``None``: a site of unknown group, which sees no group's head)."""
    return {k: v for k, v in arrays.items() if not is_group_key(k) or group_of(k) == tag}


def own_group(arrays: Mapping[str, V], tag: str) -> dict[str, V]:
    """The parameters of group ``tag`` in ``arrays``, under the model's own names."""
    start = group_key(tag, "")
    return {k[len(start):]: v for k, v in arrays.items() if k.startswith(start)}


def tagged_heads(personal: Mapping[str, V], tag: str) -> dict[str, V]:
    """The head parameters among ``personal``, under group ``tag``'s keys."""
    return {group_key(tag, k): v for k, v in personal.items() if parameter_kind(k) == "head"}
