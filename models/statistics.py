"""The statistics branch: per-sequence statistics of the raw joints, projected onto the
embedding the head classifies.

Why: under sample-level DP-SGD on a site of a few hundred sequences, the graph network's
95k parameters drown in noise, while a linear map of a few hundred standardized
statistics (bone lengths, posture, joint spreads and speeds) keeps most of its accuracy
(BENCHMARKS.md, "Differential privacy"). With ``ModelConfig.statistics`` the network's
head classifies ``[pooled + proj(z), z]`` with ``z = standardize(statistics(x))``: the
shared projection ``proj`` maps the statistics into the graph embedding that sites
average, and the head (personal when label sets differ) also reads ``z`` itself, so that
an average of noisy projections does not take away what a site's head learnt. A site
can train the branch and the head privately on top of frozen (e.g. warm-started) blocks.

The standardization is the site's own: ``scale_mean`` and ``scale_std`` are buffers of
the parameter kind ``scale``, personal under every policy, fitted once on the site's
training split (exactly without DP, by the Gaussian mechanism under DP; see
:mod:`privacy.feature_scale`). ``scale_fitted`` says whether that has happened.
"""

from __future__ import annotations

import torch
from torch import nn

from skeletons.layouts import Layout

# The branch adds this much under every square root, so that gradients stay finite where
# a joint stands still; its scale is fitted on statistics computed the same way.
SQRT_EPS = 1e-6


def sequence_statistics(x: torch.Tensor, layout: Layout, eps: float = 0.0) -> torch.Tensor:
    """Per-sequence statistics ``[N, F]`` of the first person of ``x [N, 3, T, V, M]``, in
    its dtype: bone lengths (mean, std), joint positions relative to the root (mean, std),
    joint speeds (mean, std), root position (mean) and the share of valid frames.

    With ``eps > 0`` every square root gets ``eps`` added first (trainable models read
    them: this branch and the anonymizer's action recognizer). The privacy attackers use
    the same statistics (:func:`privacy.attackers.sequence_features`).
    """
    p = x[..., 0].permute(0, 2, 3, 1)  # [N,T,V,3]
    w = (p.abs().sum(dim=(2, 3)) > 0).to(p.dtype)[..., None]  # [N,T,1] valid frames
    count = w.sum(dim=1).clamp_min(1.0)  # [N,1]

    def mstd(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # v [N,T,K]
        mean = (v * w).sum(dim=1) / count
        var = (((v - mean[:, None]) ** 2) * w).sum(dim=1) / count
        return mean, (var + eps).sqrt()

    def norm(v: torch.Tensor) -> torch.Tensor:
        return (v.pow(2).sum(dim=-1) + eps).sqrt()

    order = layout.parent_first_bones
    child = [c for c, _ in order]
    parent = [q for _, q in order]
    bones = norm(p[:, :, child] - p[:, :, parent])  # [N,T,B]
    rel = (p - p[:, :, layout.center : layout.center + 1]).reshape(p.shape[0], p.shape[1], -1)
    speed = norm(torch.diff(p, dim=1, prepend=p[:, :1]))  # [N,T,V]
    root = p[:, :, layout.center]
    parts = [*mstd(bones), *mstd(rel), *mstd(speed), mstd(root)[0], count / p.shape[1]]
    return torch.cat(parts, dim=1)


def num_statistics(layout: Layout) -> int:
    """Length of the statistics vector of one sequence in ``layout``."""
    return int(sequence_statistics(torch.zeros(1, 3, 2, layout.num_joints, 1), layout).shape[1])


class StatisticsBranch(nn.Module):
    """The site's standardization of the statistics and (``project``) their projection to ``out_dim``."""

    def __init__(self, layout: Layout, out_dim: int, project: bool = True) -> None:
        super().__init__()
        self.layout = layout
        dim = num_statistics(layout)
        self.dim = dim
        self.register_buffer("scale_mean", torch.zeros(dim))
        self.register_buffer("scale_std", torch.ones(dim))
        self.register_buffer("scale_fitted", torch.zeros(()))
        self.proj: nn.Linear | None = None
        if project:
            self.proj = nn.Linear(dim, out_dim)
            nn.init.zeros_(self.proj.weight)  # starts as a no-op on the graph embedding
            nn.init.zeros_(self.proj.bias)

    @property
    def fitted(self) -> bool:
        return bool(self.scale_fitted.item())

    def set_scale(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install the site's standardization (``std`` must be positive)."""
        mean = torch.as_tensor(mean, dtype=self.scale_mean.dtype).reshape(-1)
        std = torch.as_tensor(std, dtype=self.scale_std.dtype).reshape(-1)
        if mean.shape != self.scale_mean.shape or std.shape != self.scale_std.shape:
            raise ValueError(f"statistics scale needs {self.scale_mean.numel()} values, got "
                             f"mean {list(mean.shape)} and std {list(std.shape)}")
        if not torch.isfinite(mean).all() or not (std > 0).all():
            raise ValueError("statistics scale: mean must be finite and std positive")
        with torch.no_grad():
            self.scale_mean.copy_(mean)
            self.scale_std.copy_(std)
            self.scale_fitted.fill_(1.0)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """The standardized statistics ``[N, F]`` (no parameters: free of DP noise)."""
        return self.standardize(sequence_statistics(x, self.layout, SQRT_EPS))

    def standardize(self, raw: torch.Tensor) -> torch.Tensor:
        """Statistics ``[N, F]`` as computed by :func:`sequence_statistics`, on the site's scale."""
        return (raw.to(self.scale_mean) - self.scale_mean) / self.scale_std
