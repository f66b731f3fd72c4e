"""FSARNet: a spatial-temporal GCN whose graph is FSAR's Adaptive Topology Structure.

Besides ``forward`` it exposes the cuts that Multi-grain Knowledge Distillation needs
(``block_features`` and ``forward_from``) and ``embed`` for k-NN probes of the shared
backbone. Blocks are numbered from 1; "after block 0" means after the input streams.
"""

from __future__ import annotations

import torch
from torch import nn

from models.blocks import InputStreams, STBlock
from models.config import ModelConfig
from models.statistics import StatisticsBranch
from skeletons.layouts import Layout


class FixedGraph(nn.Module):
    """Holds the layout's physical graph ``A`` (not trained, not in the state dict)."""

    def __init__(self, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency, persistent=False)


class FSARNet(nn.Module):
    """Skeleton action classifier on input ``[N, 3, T, V, M]``."""

    def __init__(
        self, layout: Layout, num_classes: int, num_persons: int = 1,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if num_persons < 1:
            raise ValueError(f"num_persons must be at least 1, got {num_persons}")
        self.config = config or ModelConfig()
        self.layout = layout
        self.num_classes = int(num_classes)
        self.num_persons = int(num_persons)
        adjacency = torch.from_numpy(layout.adjacency())
        self.graph = FixedGraph(adjacency)
        self.streams = InputStreams(
            _parents(layout), self.config.streams, self.config.input_range
        )
        cfg = self.config
        self.input_norm = (
            nn.GroupNorm(len(cfg.streams), cfg.in_channels) if cfg.input_norm else nn.Identity()
        )
        widths = (cfg.in_channels,) + cfg.channels
        self.blocks = nn.ModuleList(
            STBlock(
                widths[i], widths[i + 1], cfg.strides[i], adjacency.shape[0],
                layout.num_joints, cfg.temporal_kernel, cfg.temporal, cfg.norm_groups,
                cfg.topology_init_std,
            )
            for i in range(cfg.num_blocks)
        )
        self.statistics = (StatisticsBranch(layout, cfg.channels[-1], cfg.statistics_projection)
                           if cfg.statistics else None)
        self.dropout = nn.Dropout(cfg.dropout)
        extra = self.statistics.dim if self.statistics is not None else 0
        self.head = nn.Linear(cfg.channels[-1] + extra, self.num_classes)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def feature_dim(self) -> int:
        """Size of :meth:`embed`'s output."""
        return self.config.channels[-1]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[3] != self.layout.num_joints:
            raise ValueError(
                f"input must be [N, 3, T, {self.layout.num_joints}, M] for layout "
                f"{self.layout.name!r}, got {list(x.shape)}"
            )

    def block_features(
        self, x: torch.Tensor, upto: int, shared_topology_only: bool = False
    ) -> torch.Tensor:
        """Features ``[N, C, T', M*V]`` after blocks ``1..upto`` (0: the input streams).

        ``shared_topology_only`` drops every block's personal unique topology ``U``,
        which is how a frozen global teacher computes its multi-grain features.
        """
        self._check_block(upto)
        self._check_input(x)
        h = self.input_norm(self.streams(x))
        adjacency = self.graph.adjacency
        for block in self.blocks[:upto]:
            h = block(h, adjacency, shared_topology_only)
        return h

    def forward_from(self, features: torch.Tensor, start_block: int,
                     statistics: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from features after block ``start_block``: blocks after it, then the head.

        With a statistics branch, ``statistics`` are the input's standardized statistics
        (:meth:`input_statistics`): multi-grain distillation hands them in with the
        teacher's block features, so that the head sees what it sees in :meth:`forward`.
        Without them the head reads zeros in their place."""
        return classify(self.pool_from(features, start_block), statistics, self.statistics, self.dropout, self.head)

    def input_statistics(self, x: torch.Tensor) -> torch.Tensor | None:
        """The statistics branch's standardized statistics of ``x`` (None without the branch)."""
        return self.statistics.statistics(x) if self.statistics is not None else None

    def pool_from(self, features: torch.Tensor, start_block: int) -> torch.Tensor:
        """The pooled feature ``[N, feature_dim]`` the head reads, from features after
        block ``start_block``: the blocks after it, then the mean over frames, joints
        and persons."""
        self._check_block(start_block)
        h = features
        adjacency = self.graph.adjacency
        for block in self.blocks[start_block:]:
            h = block(h, adjacency)
        # Mean over frames and joints of each person, then over persons: one mean.
        return h.mean(dim=(2, 3))

    def embed(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The pooled backbone feature ``[N, feature_dim]`` the head classifies; with
        ``upto``, the pooled features after blocks ``1..upto`` only (``[N, channels[upto-1]]``),
        e.g. the part of a federation's backbone its sites shared."""
        if upto is not None and upto < self.num_blocks:
            return self.block_features(x, upto).mean(dim=(2, 3))
        return self.pool_from(self.block_features(x, 0), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool_from(self.block_features(x, 0), 0)
        return classify(pooled, self.input_statistics(x), self.statistics, self.dropout, self.head)

    def _check_block(self, index: int) -> None:
        if not 0 <= index <= self.num_blocks:
            raise ValueError(f"block index {index} outside 0..{self.num_blocks}")


def classify(
    pooled: torch.Tensor, statistics: torch.Tensor | None, branch: StatisticsBranch | None,
    dropout: nn.Module, head: nn.Module,
) -> torch.Tensor:
    """The head on the pooled graph features and, with a statistics ``branch``, the
    standardized statistics (zeros when unknown): ``head([pooled + proj(z), z])``, or
    ``head([pooled, z])`` for a branch without its projection.
    A function, so that training on cached pooled features (client.frozen_trunk) runs the
    very same head."""
    if branch is not None:
        z = statistics if statistics is not None else pooled.new_zeros(pooled.shape[0], branch.dim)
        if branch.proj is not None:
            pooled = pooled + branch.proj(z)
        pooled = torch.cat([pooled, z], dim=1)
    return head(dropout(pooled))


def _parents(layout: Layout) -> list[int]:
    """Parent joint of every joint (the centre joint is its own parent)."""
    parents = list(range(layout.num_joints))
    for child, parent in layout.directed_bones:
        parents[child] = parent
    return parents


def build_model(
    layout: Layout, num_classes: int, num_persons: int = 1, config: ModelConfig | None = None
) -> FSARNet:
    """The one way to make a model: same layout, classes and config give the same shapes."""
    return FSARNet(layout, num_classes, num_persons, config)
