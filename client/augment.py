"""Training-time augmentation of skeleton batches ``[N, 3, T, V, M]``, on any device.

Random rotation, scaling and shear form one 3x3 matrix per sample (so one einsum
applies all three); temporal crop keeps a random contiguous part of each sequence and
stretches it back over the sequence's frames. Camera placement, body size and tempo
differ between sites and views; these transforms teach the model to ignore them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """Strengths; zero turns a transform off.

    ``rotate`` is the largest angle (degrees) about each axis named in ``rotate_axes``
    (y is vertical in Kinect coordinates: "xy" varies camera elevation and azimuth
    but not roll), ``scale`` the largest
    relative change per axis, ``shear`` the largest off-diagonal coefficient and
    ``temporal_crop`` the largest fraction of a sequence's frames that is cut away.
    """

    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    temporal_crop: float = 0.0
    rotate_axes: str = "xyz"

    def __post_init__(self) -> None:
        if not self.rotate_axes or set(self.rotate_axes) - set("xyz"):
            raise ValueError(f"augmentation rotate_axes {self.rotate_axes!r}: use letters of 'xyz'")
        for name in ("rotate", "scale", "shear", "temporal_crop"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1 or self.temporal_crop >= 1:
            raise ValueError("augmentation scale and temporal_crop must be below 1")

    @property
    def active(self) -> bool:
        return any((self.rotate, self.scale, self.shear, self.temporal_crop))


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``[N, 3]`` angles (radians) about x, y, z -> ``[N, 3, 3]`` rotations ``Rz Ry Rx``."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1)
    return rz.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rx.view(-1, 3, 3)


def spatial_matrices(n: int, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """One random ``[3, 3]`` transform per sample (identity where all are off)."""
    m = torch.eye(3).expand(n, 3, 3).clone()
    if aug.shear:
        m = m + _uniform((n, 3, 3), aug.shear, gen) * (1 - torch.eye(3))
    if aug.scale:
        m = m * (1 + _uniform((n, 1, 3), aug.scale, gen))
    if aug.rotate:
        mask = torch.tensor([axis in aug.rotate_axes for axis in "xyz"], dtype=torch.float32)
        angles = _uniform((n, 3), math.radians(aug.rotate), gen) * mask
        m = rotation_matrices(angles) @ m
    return m


def valid_lengths(x: torch.Tensor) -> torch.Tensor:
    """Frames up to the last non-zero one, per sample ``[N]`` (zero padding excluded)."""
    nonzero = x.abs().amax(dim=(1, 3, 4)) > 0  # [N, T]
    t = x.shape[2]
    last = t - 1 - torch.argmax(nonzero.flip(1).to(torch.uint8), dim=1)
    return torch.where(nonzero.any(dim=1), last + 1, torch.full_like(last, t))


def temporal_crop(x: torch.Tensor, max_cut: float, gen: torch.Generator) -> torch.Tensor:
    """Keep a random ``[1 - max_cut, 1]`` fraction of each sequence, resampled linearly
    over the same number of frames; zero padding after the sequence stays padding."""
    n, c, t, v, m = x.shape
    length = valid_lengths(x).to(torch.float32).cpu()  # [N]
    keep = 1 - torch.rand(n, generator=gen) * max_cut
    span = (length - 1) * keep
    start = torch.rand(n, generator=gen) * (length - 1 - span)
    steps = torch.arange(t, dtype=torch.float32)
    frac = steps[None, :] / (length[:, None] - 1).clamp(min=1)
    pos = (start[:, None] + frac * span[:, None]).clamp(min=0)
    pos = torch.minimum(pos, (length[:, None] - 1).clamp(min=0))
    i0 = pos.floor().long()
    i1 = torch.minimum(i0 + 1, (length[:, None] - 1).long().clamp(min=0))
    w = (pos - i0).to(x.dtype).to(x.device)
    inside = (steps[None, :] < length[:, None]).to(x.device)
    i0, i1 = i0.to(x.device), i1.to(x.device)
    flat = x.permute(0, 2, 1, 3, 4).reshape(n, t, c * v * m)
    a = torch.gather(flat, 1, i0[:, :, None].expand(-1, -1, flat.shape[2]))
    b = torch.gather(flat, 1, i1[:, :, None].expand(-1, -1, flat.shape[2]))
    out = (a * (1 - w[:, :, None]) + b * w[:, :, None]) * inside[:, :, None]
    return out.reshape(n, t, c, v, m).permute(0, 2, 1, 3, 4).contiguous()


def augment(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of ``x``; absent persons (all zeros) stay zeros."""
    if not aug.active:
        return x
    if aug.temporal_crop:
        x = temporal_crop(x, aug.temporal_crop, gen)
    if aug.rotate or aug.scale or aug.shear:
        mats = spatial_matrices(x.shape[0], aug, gen).to(device=x.device, dtype=x.dtype)
        x = torch.einsum("nij,njtvm->nitvm", mats, x)
    return x


def pick_views(views: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One view per sample, drawn uniformly, from ``[N, P, ...]`` precomputed augmented
    views (the augmentation pool of :mod:`client.frozen_trunk`) -> ``[N, ...]``."""
    n, count = views.shape[:2]
    pick = torch.randint(count, (n,), generator=gen).to(views.device)
    return views[torch.arange(n, device=views.device), pick]
