"""Device names as configs give them (``auto``, ``cpu``, ``cuda``, ``cuda:N``), read
without torch: the coordinator checks a run's device when it loads its config, and a
site resolves the same name to a ``torch.device`` (``client.trainer.resolve_device``)."""

from __future__ import annotations

import re

_NAME = re.compile(r"auto|(cpu|cuda)(:\d+)?")


def device_name(spec: object) -> str:
    """``spec`` stripped and lower-cased; a ValueError naming it unless it is auto, cpu,
    cuda or cuda:N (whether this machine has that device is the site's question)."""
    name = str(spec).strip().lower()
    if not _NAME.fullmatch(name):
        raise ValueError(f"device {name!r} unsupported; use auto, cpu, cuda or cuda:N")
    return name
