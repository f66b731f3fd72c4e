"""Small classifiers that attack (or use) skeleton data, trained from scratch per audit.

Two families, so that an audit does not depend on one architecture's blind spots:

- ``features``: an MLP on per-sequence statistics (bone lengths, mean posture, joint
  spread, speeds, duration). Cheap and strong against body-size and posture cues.
- ``cnn``: a temporal convolutional network over all joint coordinates and their
  velocities. Picks up motion style.

Every network standardizes its input with statistics of the data it is trained on
(kept as buffers), and :func:`fit` always starts from the weights it is given: callers
build a fresh instance with :func:`make_classifier` for every training run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.statistics import sequence_statistics
from skeletons.layouts import Layout

ATTACKER_KINDS = ("features", "cnn")


@dataclass(frozen=True)
class TrainConfig:
    """How attackers and the action classifier are trained: small, for CPU minutes."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    seed: int = 0


def sequence_features(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Per-sequence statistics ``[N, F]`` of the first person, float32.

    Bone lengths (mean, std), joint positions relative to the root (mean, std), joint
    speeds (mean, std), root position (mean) and the share of valid frames.
    """
    data = torch.from_numpy(np.asarray(x, dtype=np.float64))
    return sequence_statistics(data, layout).numpy().astype(np.float32)


class _Standardize(nn.Module):
    """Fixed affine input standardization; statistics are set by :func:`fit`."""

    def __init__(self, dim: int, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, data: torch.Tensor) -> None:
        dims = [d for d in range(data.dim()) if d != self.axis]
        self.mean.copy_(data.mean(dim=dims))
        self.std.copy_(data.std(dim=dims).clamp_min(1e-4))

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        shape = [1] * data.dim()
        shape[self.axis] = -1
        return (data - self.mean.view(shape)) / self.std.view(shape)


class MultiHead(nn.Module):
    """One linear head per task on a shared embedding."""

    def __init__(self, dim: int, num_classes: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, k) for k in num_classes)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [h(z) for h in self.heads]


class FeatureNet(nn.Module):
    """MLP on :func:`sequence_features`; input is the raw ``[N,3,T,V,M]`` array."""

    def __init__(self, layout: Layout, num_joints: int, num_classes: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.layout = layout
        dim = len(layout.directed_bones) * 2 + num_joints * 3 * 2 + num_joints * 2 + 3 + 1
        self.norm = _Standardize(dim, axis=1)
        self.body = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(dim, hidden * 2), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(hidden * 2, hidden), nn.ReLU(),
        )
        self.head = MultiHead(hidden, num_classes)

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(sequence_features(x, self.layout))

    def standardize_from(self, inputs: torch.Tensor) -> None:
        self.norm.set_stats(inputs)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(inputs))

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.embed(inputs))


class MotionCNN(nn.Module):
    """Temporal CNN over every joint coordinate and its velocity (all persons)."""

    def __init__(self, channels: int, num_classes: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.norm = _Standardize(channels * 2, axis=1)
        h = hidden
        self.body = nn.Sequential(
            nn.Conv1d(channels * 2, h, 5, padding=2), nn.GroupNorm(4, h), nn.ReLU(),
            nn.Conv1d(h, h, 5, padding=2, stride=2), nn.GroupNorm(4, h), nn.ReLU(),
            nn.Conv1d(h, h * 2, 3, padding=1, stride=2), nn.GroupNorm(4, h * 2), nn.ReLU(),
        )
        self.drop = nn.Dropout(0.3)
        self.head = MultiHead(h * 4, num_classes)

    @staticmethod
    def prepare(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    @staticmethod
    def sequence(t: torch.Tensor) -> torch.Tensor:
        """``[N,3,T,V,M]`` to ``[N, 2*3*V*M, T]``: coordinates then velocities."""
        n, c, frames, v, m = t.shape
        seq = t.permute(0, 1, 3, 4, 2).reshape(n, c * v * m, frames)
        vel = torch.diff(seq, dim=2, prepend=seq[:, :, :1])
        return torch.cat([seq, vel], dim=1)

    def standardize_from(self, inputs: torch.Tensor) -> None:
        self.norm.set_stats(self.sequence(inputs))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        h = self.body(self.norm(self.sequence(inputs)))
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.drop(self.embed(inputs)))


def make_classifier(
    kind: str, x_shape: Sequence[int], layout: Layout, num_classes: Sequence[int], config: TrainConfig
) -> nn.Module:
    """A freshly initialized network of ``kind`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    if kind == "features":
        return FeatureNet(layout, int(x_shape[3]), num_classes, config.hidden)
    if kind == "cnn":
        return MotionCNN(int(x_shape[1] * x_shape[3] * x_shape[4]), num_classes, config.hidden)
    raise ValueError(f"unknown attacker kind {kind!r}; known: {', '.join(ATTACKER_KINDS)}")


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig) -> nn.Module:
    """Train ``model`` on ``x [N,3,T,V,M]`` and labels ``y [N]`` or ``[N, heads]``.

    Labels below zero are ignored (unknown attribute). Returns the trained model in
    evaluation mode.
    """
    inputs = model.prepare(x)
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64).reshape(len(x), -1))
    if labels.shape[1] != len(model.head.heads):
        raise ValueError(f"labels have {labels.shape[1]} columns, the model has {len(model.head.heads)} heads")
    model.standardize_from(inputs)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, -(-len(x) // config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    model.train()
    for _ in range(config.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), config.batch_size):
            idx = perm[start : start + config.batch_size]
            if len(idx) < 2:
                continue
            outs = model(inputs[idx])
            loss = sum(
                F.cross_entropy(o, labels[idx, h], ignore_index=-1)
                for h, o in enumerate(outs)
                if (labels[idx, h] >= 0).any()
            )
            if not torch.is_tensor(loss):
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """Logits per head for ``x``."""
    model.eval()
    return [o.numpy() for o in model(model.prepare(x))]


@torch.no_grad()
def embed(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The shared embedding (before the heads) of ``x``."""
    model.eval()
    return model.embed(model.prepare(x)).numpy()
