"""Building blocks of the network: input streams, the spatial-temporal block.

Tensors inside the network are ``[N, C, T, M*V]``: the persons of a sample sit side
by side on the joint axis. Convolutions and the graph treat every person alike and
never mix them, exactly as if persons were folded into the batch, but the batch axis
stays the sample axis, so DP-SGD's per-sample clipping bounds each *sample*.
Normalization is GroupNorm (per sample, no running statistics) for the same reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.topology import AdaptiveTopology


class InputStreams(nn.Module):
    """Derives joint, bone and motion channels from coordinates (no parameters).

    Bones are ``x[joint] - x[parent]`` (zero at the centre joint), motion is
    ``x[t + 1] - x[t]`` (zero at the last frame): cheap cues that a single-stream
    network would otherwise have to learn.
    """

    def __init__(
        self, parents: list[int], streams: tuple[str, ...], input_range: bool = False
    ) -> None:
        super().__init__()
        self.streams = streams
        self.input_range = input_range
        self.register_buffer("parents", torch.tensor(parents, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, 3, T, V, M] -> [N, 3 * S, T, M * V]
        n, c, t, v, m = x.shape
        if self.input_range:
            x = rescale_to_unit_range(x)
        x = x.permute(0, 1, 2, 4, 3)  # [N, 3, T, M, V]
        parts = []
        for name in self.streams:
            if name == "joint":
                parts.append(x)
            elif name == "bone":
                parts.append(x - x[..., self.parents])
            else:  # motion
                motion = torch.zeros_like(x)
                motion[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
                parts.append(motion)
        return torch.cat(parts, dim=1).reshape(n, c * len(parts), t, m * v)


def rescale_to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per sample and axis, map the coordinates of present bodies onto ``[-1, 1]``; a
    body absent from a frame (all zeros there) stays zero."""
    present = (x != 0).any(dim=1, keepdim=True).any(dim=3, keepdim=True)  # [N, 1, T, 1, M]
    big = torch.finfo(x.dtype).max
    lo = torch.where(present, x, big).amin(dim=(2, 3, 4), keepdim=True)
    hi = torch.where(present, x, -big).amax(dim=(2, 3, 4), keepdim=True)
    span = (hi - lo).clamp(min=1e-6)
    scaled = (x - lo) / span * 2 - 1
    return torch.where(present, scaled, torch.zeros_like(x))


class GraphConv(nn.Module):
    """Aggregate over the adaptive graph, then mix partitions and channels (1x1 conv)."""

    def __init__(
        self, c_in: int, c_out: int, num_partitions: int, num_joints: int,
        groups: int, init_std: float,
    ) -> None:
        super().__init__()
        self.topology = AdaptiveTopology(num_partitions, num_joints, init_std)
        self.conv = nn.Conv2d(num_partitions * c_in, c_out, kernel_size=1)
        self.norm = nn.GroupNorm(groups, c_out)
        self.residual = (
            nn.Conv2d(c_in, c_out, kernel_size=1) if c_in != c_out else nn.Identity()
        )

    def forward(
        self, x: torch.Tensor, adjacency: torch.Tensor, shared_only: bool = False
    ) -> torch.Tensor:
        if shared_only:
            # The frozen teacher: bypass the module call so Opacus never records it.
            y = self.topology.forward(adjacency, x, shared_only=True)
        else:
            y = self.topology(adjacency, x)
        return torch.relu(self.norm(self.conv(y)) + self.residual(x))


class TemporalConv(nn.Module):
    """Convolution along frames (per joint), full or depthwise-separable."""

    def __init__(self, channels: int, kernel: int, stride: int, kind: str, groups: int) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        if kind == "full":
            self.conv = nn.Conv2d(channels, channels, (kernel, 1), (stride, 1), (pad, 0))
            self.pointwise = nn.Identity()
        else:
            self.conv = nn.Conv2d(
                channels, channels, (kernel, 1), (stride, 1), (pad, 0), groups=channels
            )
            self.pointwise = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pointwise(self.conv(x)))


class MultiScaleTemporalConv(nn.Module):
    """Temporal branches of different reach, concatenated (as in MS-G3D / CTR-GCN).

    Four branches of ``channels / 4``: two ``kernel x 1`` convolutions with dilation 1
    and 2, a 3-frame max pool and a plain 1x1, each after a 1x1 reduction. A motion
    lasting a few frames and one spanning the sequence are both seen, for about a
    quarter of the multiply-adds of a full ``9 x 1`` convolution (the slim network's
    FLOPs halve; on a CPU its speed stays about the same).
    """

    def __init__(self, channels: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"multiscale temporal convolution needs channels divisible by 4, got {channels}")
        width = channels // 4
        branch_groups = math.gcd(groups, width)  # a GroupNorm's groups must divide its width
        self.branches = nn.ModuleList()
        for dilation in (1, 2):
            pad = (kernel - 1) // 2 * dilation
            self.branches.append(nn.Sequential(
                _reduce(channels, width, branch_groups),
                nn.Conv2d(width, width, (kernel, 1), (stride, 1), (pad, 0), (dilation, 1)),
            ))
        self.branches.append(nn.Sequential(
            _reduce(channels, width, branch_groups),
            nn.MaxPool2d((3, 1), (stride, 1), (1, 0)),
        ))
        self.branches.append(nn.Sequential(nn.Conv2d(channels, width, 1, (stride, 1))))
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.cat([branch(x) for branch in self.branches], dim=1))


def _reduce(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """1x1 convolution, GroupNorm, ReLU: a branch's entry."""
    out = nn.Sequential()
    out.add_module("conv", nn.Conv2d(c_in, c_out, 1))
    out.add_module("norm", nn.GroupNorm(groups, c_out))
    out.add_module("relu", nn.ReLU())
    return out


class STBlock(nn.Module):
    """One spatial-temporal block: graph convolution, temporal convolution, residual."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, num_partitions: int, num_joints: int,
        temporal_kernel: int, temporal: str, groups: int, init_std: float,
    ) -> None:
        super().__init__()
        self.gcn = GraphConv(c_in, c_out, num_partitions, num_joints, groups, init_std)
        self.tcn: nn.Module = (
            MultiScaleTemporalConv(c_out, temporal_kernel, stride, groups)
            if temporal == "multiscale"
            else TemporalConv(c_out, temporal_kernel, stride, temporal, groups)
        )
        if c_in == c_out and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("conv", nn.Conv2d(c_in, c_out, 1, (stride, 1)))
            self.shortcut.add_module("norm", nn.GroupNorm(groups, c_out))

    def forward(
        self, x: torch.Tensor, adjacency: torch.Tensor, shared_only: bool = False
    ) -> torch.Tensor:
        return torch.relu(self.tcn(self.gcn(x, adjacency, shared_only)) + self.shortcut(x))
