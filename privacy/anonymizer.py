"""Learned skeleton anonymization in the STPrivacy spirit, and the site-facing switch.

A token is one joint over a window of ``window`` frames. The :class:`Anonymizer`

1. puts every sequence into the canonical body (:mod:`privacy.bone_normalize`), so body
   size never reaches the network's output;
2. **sparsifies**: a scorer rates every token and exactly ``round(keep_ratio * tokens)``
   tokens per person survive; the others are refilled by linear interpolation in time
   from the kept tokens of the same joint, or by the canonical body where a joint kept
   nothing. ``keep_ratio`` is an input of the forward pass (training draws it at random),
   so it can be changed at deployment without retraining;
3. **anonymizes**: a small spatio-temporal graph network adds a smooth displacement to
   the sparsified skeleton; then the skeleton is blended with the *prototype* of the
   action a built-in recognizer predicts (the mean canonical-body performance of that
   action over the training subjects, weighted by the predicted probabilities), with
   share ``mix`` (adjustable at deployment like ``keep_ratio``): a person's own way of
   moving is largely replaced by the average performer's, which freshly trained
   re-identifiers cannot undo, while the action stays. Forward kinematics finally
   restores the canonical bone lengths. The prototypes are averages over the site's
   subjects; they stay in the model file, which therefore stays on the site.

By default (``epochs=0``) only the recognizer and the prototypes are fitted: the scorer
and the displacement keep their initial state (the displacement is zero), and the
output is the sparsified canonical body blended with share ``mix = 0.95`` of the
predicted action's prototype. Against freshly trained attackers the adversarially
trained displacement left more identity than none at equal action accuracy (Kinder-Gator,
BENCHMARKS.md), so it is an option for experiments (``epochs > 0``), not the default.

Training (:func:`fit_anonymizer`) alternates between adversaries and the anonymizer.
The privacy adversary (a re-identifier with attribute heads: a motion CNN plus an MLP on
per-sequence statistics) is trained on the anonymizer's current output,
``adversary_steps`` times per anonymizer step. The action recognizer (the same two
networks plus, with ``teacher_features``, the audit's feature MLP; their probabilities
are averaged) is trained first on the canonical-body input for ``action_teacher_epochs``
with a one-cycle schedule and then frozen; ``teacher_ensemble`` such recognizers, each from
its own initialization, are trained and all their parts averaged. Its accuracy on unseen people bounds the
action accuracy of the output, since it picks the prototype. A recognizer
that co-adapts with the anonymizer lets it hide the action in patterns no fresh
classifier can read (``action_teacher_epochs=0`` co-trains it anyway); the anonymizer then minimizes
``action_weight * CE(action) + privacy_weight * (P(reid) + attribute_weight * sum P(attr))
+ reconstruction_weight * MSE(input) + prototype_weight * MSE(action prototype)
+ smoothness_weight * roughness``. The prototype of an action is the mean canonical-body
sequence of all training performances of it: pulling towards it replaces a person's way
of moving by the average performer's, which a freshly trained re-identifier cannot undo
(fooling only the adversary it trained against can). Labels are needed only to train;
the network anonymizes unlabeled data. ``P`` pushes the
adversary towards a uniform guess (``privacy_loss="uniform"``) or maximizes its error
(``"neg_ce"``). The privacy adversary is re-initialized every
``adversary_reset_every`` epochs so that the anonymizer cannot overfit one attacker.

Models are saved as ``<stem>.npz`` (weights, no pickle) plus ``<stem>.json`` (config
and the weights' SHA-256), both written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.statistics import sequence_statistics
from privacy.attackers import FeatureNet, MotionCNN
from privacy.bone_normalize import (
    BoneNormalizeConfig,
    CANONICAL_TORSO,
    canonical_bone_lengths,
    canonical_pose,
    normalize_bones,
)
from privacy.site_anonymization import METHODS  # the site switch's light module owns the list
from skeletons.layouts import Layout, get_layout

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: the action recognizer may carry a third part (teacher_features); 3: several recognizers
_DECIMETRE = 0.1  # network inputs and position losses are measured in decimetres


def _positive_ratio(name: str, value: float) -> None:
    if not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value}")


@dataclass
class AnonymizerConfig:
    """Architecture and training of the learned anonymizer (trade-off weights included)."""

    window: int = 4
    channels: int = 32
    blocks: int = 2
    epochs: int = 0  # adversarial training of scorer and displacement (0: off, see the module docstring)
    batch_size: int = 32
    lr: float = 2e-3
    adversary_lr: float = 2e-3
    adversary_hidden: int = 48
    adversary_steps: int = 1
    action_teacher_epochs: int = 40  # 0: the action recognizer adapts to the anonymizer instead
    teacher_batch_size: int = 64
    teacher_features: bool = True  # the recognizer adds an MLP on motion statistics (+3 points unseen)
    teacher_ensemble: int = 3  # recognizers from different initializations, probabilities averaged (+2 points unseen)
    action_weight: float = 1.0
    privacy_weight: float = 0.3
    attribute_weight: float = 1.0
    reconstruction_weight: float = 0.5
    smoothness_weight: float = 1.0
    prototype_weight: float = 0.0
    mix: float = 0.95  # share of the predicted action's prototype in the output (0: none)
    prototype_choice: str = "hard"  # "hard": the most likely action's; "soft": probability-weighted
    num_classes: int = 0  # set by fit_anonymizer: actions, persons and frames of the
    num_persons: int = 1  # prototypes the model carries
    frames: int = 0
    keep_ratio_min: float = 0.3
    keep_ratio_max: float = 1.0
    adversary_reset_every: int = 4
    privacy_loss: str = "uniform"  # "uniform" | "neg_ce"
    bones: BoneNormalizeConfig = field(default_factory=BoneNormalizeConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.bones, dict):
            self.bones = BoneNormalizeConfig.from_dict(self.bones)
        if self.epochs < 0:
            raise ValueError(f"AnonymizerConfig.epochs must be >= 0, got {self.epochs}")
        if self.window < 1:
            raise ValueError(f"AnonymizerConfig.window must be >= 1, got {self.window}")
        if self.prototype_choice not in ("hard", "soft"):
            raise ValueError(f"AnonymizerConfig.prototype_choice must be hard or soft, not {self.prototype_choice!r}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"AnonymizerConfig.mix must be in [0, 1], got {self.mix}")
        if self.mix > 0 and self.action_teacher_epochs < 1:
            raise ValueError("AnonymizerConfig.mix > 0 needs action_teacher_epochs >= 1 (the action recognizer)")
        if self.teacher_ensemble < 1:
            raise ValueError(f"AnonymizerConfig.teacher_ensemble must be >= 1, got {self.teacher_ensemble}")
        if self.teacher_batch_size < 2:
            raise ValueError(f"AnonymizerConfig.teacher_batch_size must be >= 2, got {self.teacher_batch_size}")
        if self.adversary_steps < 1:
            raise ValueError(f"AnonymizerConfig.adversary_steps must be >= 1, got {self.adversary_steps}")
        if self.privacy_loss not in ("uniform", "neg_ce"):
            raise ValueError(f"AnonymizerConfig.privacy_loss must be uniform or neg_ce, not {self.privacy_loss!r}")
        _positive_ratio("AnonymizerConfig.keep_ratio_min", self.keep_ratio_min)
        _positive_ratio("AnonymizerConfig.keep_ratio_max", self.keep_ratio_max)
        if self.keep_ratio_min > self.keep_ratio_max:
            raise ValueError("AnonymizerConfig.keep_ratio_min is above keep_ratio_max")
        for f in ("action_weight", "privacy_weight", "attribute_weight", "reconstruction_weight",
                  "smoothness_weight", "prototype_weight"):
            if getattr(self, f) < 0:
                raise ValueError(f"AnonymizerConfig.{f} must be >= 0, got {getattr(self, f)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bones"] = self.bones.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AnonymizerConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown anonymizer config fields: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class AnonymizationConfig:
    """What a site applies to its arrays before training and before any export.

    ``method``: ``none`` (raw), ``bones`` (canonical body, no model) or ``learned``
    (the model at ``model_path``). ``keep_ratio`` is the share of joint-time tokens the
    learned anonymizer keeps. ``layout`` names the arrays' layout for ``bones``; a
    learned model carries its own.
    """

    method: str = "none"
    keep_ratio: float = 1.0
    model_path: str | None = None
    layout: str = "kinect-v1"
    bones: BoneNormalizeConfig = field(default_factory=BoneNormalizeConfig)
    batch_size: int = 256
    mix: float | None = None  # learned: share of the action prototype (None: the model's)

    def __post_init__(self) -> None:
        if isinstance(self.bones, dict):
            self.bones = BoneNormalizeConfig.from_dict(self.bones)
        if self.method not in METHODS:
            raise ValueError(f"anonymization method must be one of {', '.join(METHODS)}, not {self.method!r}")
        _positive_ratio("anonymization keep_ratio", self.keep_ratio)
        if self.method == "learned" and not self.model_path:
            raise ValueError("anonymization method 'learned' needs model_path")


# --------------------------------------------------------------------------- network


class _GraphBlock(nn.Module):
    """Graph convolution over the layout's partitions, then a temporal convolution."""

    def __init__(self, cin: int, cout: int, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency)
        k = adjacency.shape[0]
        self.cout = cout
        self.spatial = nn.Conv2d(cin, cout * k, 1)
        self.temporal = nn.Conv2d(cout, cout, (9, 1), padding=(4, 0))
        self.norm1 = nn.GroupNorm(4, cout)
        self.norm2 = nn.GroupNorm(4, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B,C,T,V]
        b, _, t, v = h.shape
        g = self.spatial(h).view(b, -1, self.cout, t, v)
        g = torch.einsum("bkctv,kwv->bctw", g, self.adjacency)  # row w receives from v
        g = F.relu(self.norm1(g))
        g = self.norm2(self.temporal(g))
        return F.relu(g + self.skip(h))


class Anonymizer(nn.Module):
    """Sparsify-then-transform network on canonical-body skeletons ``[N,3,T,V,M]``."""

    def __init__(self, layout: Layout, config: AnonymizerConfig) -> None:
        super().__init__()
        self.layout = layout
        self.config = config
        adjacency = torch.from_numpy(layout.adjacency())
        c = config.channels
        self.scorer = nn.Sequential(_GraphBlock(3, c // 2, adjacency), nn.Conv2d(c // 2, 1, 1))
        blocks = [_GraphBlock(4, c, adjacency)] + [_GraphBlock(c, c, adjacency) for _ in range(config.blocks - 1)]
        self.transform = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c, 3, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity on the sparsified input
        nn.init.zeros_(self.out.bias)
        order = layout.parent_first_bones
        unit = config.bones.unit
        self.step = _DECIMETRE if unit == "metres" else _DECIMETRE / CANONICAL_TORSO
        self.register_buffer("canon", torch.from_numpy(canonical_pose(layout, unit).T.astype(np.float32)))  # [3,V]
        self.register_buffer("lengths", torch.from_numpy(canonical_bone_lengths(layout, unit).astype(np.float32)))
        self._order = order
        self.teacher: nn.ModuleList | None = None
        if config.num_classes > 0:
            channels = 3 * layout.num_joints * config.num_persons
            self.teacher = nn.ModuleList(
                part for _ in range(config.teacher_ensemble)
                for part in _recognizer(layout, channels, [config.num_classes], config.adversary_hidden,
                                        config.teacher_features))
            self.register_buffer("prototypes", torch.zeros(
                config.num_classes, 3, max(1, config.frames), layout.num_joints, config.num_persons))

    def train(self, mode: bool = True) -> "Anonymizer":
        """The action recognizer stays in evaluation mode: it is trained once, then frozen."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def predicted_prototype(self, x: torch.Tensor) -> torch.Tensor:
        """The prototype of the action the recognizer predicts for ``x`` (``hard``), or all
    prototypes weighted by its probabilities (``soft``)."""
        assert self.teacher is not None
        if x.shape[4] != self.config.num_persons:
            raise ValueError(f"arrays have {x.shape[4]} persons, the anonymizer was trained on "
                             f"{self.config.num_persons}")
        probs = sum(F.softmax(part(x)[0], dim=1) for part in self.teacher) / len(self.teacher)
        if self.config.prototype_choice == "hard":  # the full posterior is itself a style signature
            probs = F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
        protos = self.prototypes
        if protos.shape[2] != x.shape[2]:  # other frame count: resample the prototypes in time
            k, c, t0, v, m = protos.shape
            flat = protos.permute(0, 1, 3, 4, 2).reshape(k, c * v * m, t0)
            flat = F.interpolate(flat, size=x.shape[2], mode="linear", align_corners=True)
            protos = flat.view(k, c, v, m, x.shape[2]).permute(0, 1, 4, 2, 3)
        return torch.einsum("nk,kctvm->nctvm", probs, protos)

    # -- tokens ---------------------------------------------------------------
    def num_tokens(self, frames: int) -> int:
        """Tokens per person for ``frames`` frames: joints times time windows."""
        return math.ceil(frames / self.config.window) * self.layout.num_joints

    def kept_count(self, frames: int, keep_ratio: float) -> int:
        """Exactly how many tokens per person survive at ``keep_ratio``."""
        _positive_ratio("keep_ratio", keep_ratio)
        total = self.num_tokens(frames)
        return min(total, max(1, int(round(keep_ratio * total))))

    def token_logits(self, p: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, Tw, V]`` of person-sequences ``p [B,3,T,V]``."""
        w = self.config.window
        s = self.scorer(p / self.step)  # [B,1,T,V]
        tw = math.ceil(p.shape[2] / w)
        s = F.pad(s, (0, 0, 0, tw * w - p.shape[2]))
        return s.view(s.shape[0], tw, w, -1).mean(dim=2)

    def token_mask(self, logits: torch.Tensor, keep_ratio: float) -> torch.Tensor:
        """Hard 0/1 mask ``[B, Tw, V]`` keeping the top ``kept_count`` tokens."""
        b, tw, v = logits.shape
        k = self.kept_count(tw * self.config.window, keep_ratio) if tw * v > 0 else 0
        top = logits.reshape(b, -1).topk(k, dim=1).indices
        mask = torch.zeros(b, tw * v, device=logits.device)
        mask.scatter_(1, top, 1.0)
        return mask.view(b, tw, v)

    # -- forward ----------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep_ratio: float, mix: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anonymize canonical-body ``x [N,3,T,V,M]``; returns (output, token mask [N,M,Tw,V]).

        ``mix`` (default: the config's) is the share of the predicted action's prototype.
        """
        mix = self.config.mix if mix is None else float(mix)
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        n, c, t, v, m = x.shape
        p = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)
        present = (p.abs().sum(dim=(1, 3)) > 0).float()  # [B,T] frames where the person is
        logits = self.token_logits(p)
        hard = self.token_mask(logits, keep_ratio)
        soft = torch.sigmoid(logits)
        gate = hard + soft - soft.detach()  # straight-through: values of hard, gradient of soft
        w = self.config.window
        frame_gate = gate.repeat_interleave(w, dim=1)[:, :t]  # [B,T,V]
        filled = self._fill(p, hard.repeat_interleave(w, dim=1)[:, :t])
        sparse = frame_gate.unsqueeze(1) * p + (1 - frame_gate.unsqueeze(1)) * filled
        h = torch.cat([sparse / self.step, frame_gate.unsqueeze(1)], dim=1)
        moved = sparse + self.step * self.out(self.transform(h))
        if self.teacher is not None and mix > 0:
            proto = self.predicted_prototype(x).permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)
            moved = (1 - mix) * moved + mix * proto
        out = self._kinematics(moved) * present[:, None, :, None]
        out = out.view(n, m, c, t, v).permute(0, 2, 3, 4, 1)
        return out, hard.view(n, m, hard.shape[1], v)

    def _fill(self, p: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Values for dropped frames: time interpolation per joint, else canonical body."""
        b, c, t, v = p.shape
        idx = torch.arange(t, device=p.device).view(1, t, 1).expand(b, t, v)
        kept = keep > 0
        prev = torch.where(kept, idx, torch.full_like(idx, -1)).cummax(dim=1).values
        nxt = torch.where(kept, idx, torch.full_like(idx, t)).flip(1).cummin(dim=1).values.flip(1)
        has_prev, has_next = prev >= 0, nxt < t
        pi, ni = prev.clamp(min=0), nxt.clamp(max=t - 1)
        gather = lambda i: p.gather(2, i.unsqueeze(1).expand(b, c, t, v))  # noqa: E731
        xp, xn = gather(pi), gather(ni)
        span = (nxt - prev).clamp(min=1).float()
        frac = ((idx - prev).float() / span).unsqueeze(1)
        interp = torch.where((has_prev & has_next).unsqueeze(1), xp + frac * (xn - xp),
                             torch.where(has_prev.unsqueeze(1), xp, xn))
        root = self.layout.center
        root_track = torch.where((has_prev | has_next)[:, None, :, root : root + 1],
                                 interp[..., root : root + 1], torch.zeros_like(interp[..., :1]))
        canon = root_track + self.canon.view(1, c, 1, v)
        return torch.where((has_prev | has_next).unsqueeze(1), interp, canon)

    def _kinematics(self, p: torch.Tensor) -> torch.Tensor:
        """Restore canonical bone lengths along the directions of ``p [B,3,T,V]``."""
        joints = [None] * p.shape[3]
        joints[self.layout.center] = p[..., self.layout.center]
        rest = self.canon
        for b, (child, parent) in enumerate(self._order):
            vec = p[..., child] - p[..., parent]
            norm = vec.norm(dim=1, keepdim=True)
            rest_dir = (rest[:, child] - rest[:, parent]).view(1, 3, 1)
            rest_dir = rest_dir / rest_dir.norm().clamp_min(1e-6)
            unit = torch.where(norm > 1e-6, vec / norm.clamp_min(1e-6), rest_dir)
            joints[child] = joints[parent] + self.lengths[b] * unit
        return torch.stack(joints, dim=-1)

    # -- numpy API --------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """The canonical-body input this model was trained on."""
        return normalize_bones(x, self.layout, self.config.bones)

    @torch.no_grad()
    def anonymize(self, x: np.ndarray, keep_ratio: float = 1.0, batch_size: int = 256,
                  mix: float | None = None) -> np.ndarray:
        """Anonymized copy of ``x [N,3,T,V,M]`` (float32, same shape and layout)."""
        _positive_ratio("keep_ratio", keep_ratio)
        xn = self.prepare(x)
        self.eval()
        outs = [self(torch.from_numpy(xn[i : i + batch_size]), keep_ratio, mix)[0].numpy()
                for i in range(0, len(xn), batch_size)]
        return np.concatenate(outs, axis=0) if outs else xn.copy()

    @torch.no_grad()
    def kept_tokens(self, x: np.ndarray, keep_ratio: float) -> np.ndarray:
        """Boolean mask ``[N, M, Tw, V]`` of the tokens that survive at ``keep_ratio``."""
        self.eval()
        return self(torch.from_numpy(self.prepare(x)), keep_ratio)[1].numpy() > 0


# --------------------------------------------------------------------------- training


def adversary_step_on(net: nn.Module, optim: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> None:
    """One supervised step of every part of ``net`` on (detached) ``x``."""
    net.train()
    loss = sum(F.cross_entropy(o, target[:, h], ignore_index=-1)
               for part in net for h, o in enumerate(part(x.detach())) if (target[:, h] >= 0).any())
    optim.zero_grad()
    loss.backward()
    optim.step()


class _FeatureRecognizer(FeatureNet):
    """The audit's statistics MLP (:class:`FeatureNet`), differentiable in the raw sequence,
    so that the anonymizer can be trained through it."""

    def standardize_from(self, x: torch.Tensor) -> None:
        self.norm.set_stats(sequence_statistics(x, self.layout, eps=1e-8))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.embed(sequence_statistics(x, self.layout, eps=1e-8)))


def _recognizer(layout: Layout, channels: int, classes: list[int], hidden: int, features: bool) -> nn.ModuleList:
    """A motion CNN plus a statistics MLP, and with ``features`` the audit's feature MLP."""
    parts: list[nn.Module] = [MotionCNN(channels, classes, hidden), _StatsAdversary(channels, classes, hidden)]
    if features:
        parts.append(_FeatureRecognizer(layout, layout.num_joints, classes, hidden))
    return nn.ModuleList(parts)


class _StatsAdversary(nn.Module):
    """MLP on per-sequence means and spreads of every coordinate and velocity: the cheap
    statistics (posture, amplitude, speed) that a feature attacker exploits."""

    def __init__(self, channels: int, num_classes: list[int], hidden: int) -> None:
        super().__init__()
        self.register_buffer("norm_mean", torch.zeros(channels * 4))
        self.register_buffer("norm_std", torch.ones(channels * 4))
        self.body = nn.Sequential(nn.Linear(channels * 4, hidden), nn.ReLU(), nn.Dropout(0.2))
        self.heads = nn.ModuleList(nn.Linear(hidden, k) for k in num_classes)

    @staticmethod
    def stats(x: torch.Tensor) -> torch.Tensor:
        seq = MotionCNN.sequence(x)
        return torch.cat([seq.mean(dim=2), seq.std(dim=2)], dim=1)

    def standardize_from(self, x: torch.Tensor) -> None:
        s = self.stats(x)
        self.norm_mean.copy_(s.mean(dim=0))
        self.norm_std.copy_(s.std(dim=0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.body((self.stats(x) - self.norm_mean) / self.norm_std)
        return [head(h) for head in self.heads]


def _privacy_term(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """How much the adversary still knows; 0 when it is reduced to a uniform guess."""
    known = target >= 0
    if not known.any():
        return logits.sum() * 0.0
    logits, target = logits[known], target[known]
    if kind == "uniform":
        return -F.log_softmax(logits, dim=1).mean() - math.log(logits.shape[1])
    ce = F.cross_entropy(logits, target)
    return -torch.clamp(ce, max=2.0 * math.log(logits.shape[1]))


def _action_prototypes(xn: torch.Tensor, actions: torch.Tensor, k: int) -> torch.Tensor:
    """Mean canonical-body sequence of each of ``k`` actions ``[K,3,T,V,M]``: the average performer."""
    sums = torch.zeros((k,) + tuple(xn.shape[1:]))
    sums.index_add_(0, actions, xn)
    counts = torch.bincount(actions, minlength=k).clamp_min(1).float()
    return sums / counts.view(-1, 1, 1, 1, 1)


def action_prototypes(x: np.ndarray, actions: np.ndarray, layout: Layout,
                      bones: BoneNormalizeConfig | None = None) -> torch.Tensor:
    """Prototypes ``[K,3,T,V,M]`` of every action code ``0..K-1`` in ``actions``: the mean
    canonical-body performance over ``x``. Computed once, they can be given to several
    :func:`fit_anonymizer` calls (the audit's cross-fitted models share them)."""
    codes = _codes("prototype actions", actions, len(x))
    k = int(codes.max()) + 1 if len(codes) else 0
    missing = sorted(set(range(k)) - set(codes.tolist()))
    if missing:
        raise ValueError(f"prototype data have no performance of action code(s) {missing[:10]}")
    xn = torch.from_numpy(normalize_bones(x, layout, bones or BoneNormalizeConfig()))
    return _action_prototypes(xn, torch.from_numpy(codes), k)


def _roughness(out: torch.Tensor, x: torch.Tensor, step: float) -> torch.Tensor:
    """Mean squared acceleration of the displacement the anonymizer added."""
    d = (out - x) / step
    if d.shape[2] < 3:
        return d.sum() * 0.0
    return (d[:, :, 2:] - 2 * d[:, :, 1:-1] + d[:, :, :-2]).pow(2).mean()


def _fit_action_teacher(net: nn.Module, xn: torch.Tensor, actions: torch.Tensor, cfg: AnonymizerConfig,
                        gen: torch.Generator) -> None:
    """Train the action recognizer on canonical-body input with a one-cycle schedule.

    Its accuracy on people it has not seen bounds the anonymizer's action accuracy (the
    prototype it picks is painted in), so it gets the schedule and length the audit's own
    classifiers get rather than a few constant-rate epochs.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.adversary_lr, weight_decay=1e-4)
    size = cfg.teacher_batch_size
    steps = cfg.action_teacher_epochs * math.ceil(len(xn) / size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.adversary_lr, total_steps=steps)
    target = actions.unsqueeze(1)
    for _ in range(cfg.action_teacher_epochs):
        perm = torch.randperm(len(xn), generator=gen)
        for start in range(0, len(xn), size):
            idx = perm[start : start + size]
            if len(idx) > 1:
                adversary_step_on(net, opt, xn[idx], target[idx])
            sched.step()


def train_action_recognizer(layout: Layout, xn: torch.Tensor, actions: torch.Tensor, cfg: AnonymizerConfig,
                            gen: torch.Generator, seed: int) -> nn.ModuleList:
    """``cfg.teacher_ensemble`` recognizers on canonical-body ``xn``, as one list of parts.

    Each starts from its own initialization; the anonymizer averages the probabilities of
    all parts, and on people it never saw the average of three is about two points more
    accurate than one recognizer (``python -m privacy.recognizer_bench``).
    """
    num_actions = int(actions.max()) + 1
    channels = 3 * layout.num_joints * xn.shape[4]
    parts: list[nn.Module] = []
    for k in range(cfg.teacher_ensemble):
        torch.manual_seed(seed + 7919 * k)
        net = _recognizer(layout, channels, [num_actions], cfg.adversary_hidden, cfg.teacher_features)
        for part in net:
            part.standardize_from(xn)
        _fit_action_teacher(net, xn, actions, cfg, gen)
        parts.extend(net)
    return nn.ModuleList(parts)


def fit_anonymizer(
    x: np.ndarray,
    actions: np.ndarray,
    subjects: np.ndarray,
    attributes: dict[str, np.ndarray],
    layout: Layout,
    config: AnonymizerConfig | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    prototypes: torch.Tensor | None = None,
) -> Anonymizer:
    """Train an anonymizer on a site's own data.

    ``actions`` and ``subjects`` are integer codes ``[N]``; ``attributes`` maps a name to
    integer codes ``[N]`` (negative = unknown). The adversaries live only inside this
    function. ``prototypes`` (from :func:`action_prototypes`, at least one per action of
    the training data; default: the training data's own) are what the model paints: the
    audit passes those of all of a data set's people, as a site's one model averages over
    all of its own, while the recognizer and the network still learn from the training
    people only.
    """
    cfg = config or AnonymizerConfig()
    actions = _codes("actions", actions, len(x))
    subjects = _codes("subjects", subjects, len(x))
    attr_names = sorted(attributes)
    attr_codes = [_codes(f"attribute {a!r}", attributes[a], len(x)) for a in attr_names]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    xn = torch.from_numpy(normalize_bones(x, layout, cfg.bones))
    num_actions = int(actions.max()) + 1
    if cfg.mix > 0:
        cfg = replace(cfg, num_classes=num_actions, num_persons=int(x.shape[4]), frames=int(x.shape[2]))
    else:
        cfg = replace(cfg, num_classes=0)
    model = Anonymizer(layout, cfg)
    priv_classes = [int(subjects.max()) + 1] + [max(1, int(a.max()) + 1) for a in attr_codes]
    y_act = torch.from_numpy(actions)
    if prototypes is None:
        prototypes = _action_prototypes(xn, y_act, num_actions)
    elif prototypes.shape[0] < num_actions or tuple(prototypes.shape[1:]) != tuple(xn.shape[1:]):
        raise ValueError(f"prototypes are {tuple(prototypes.shape)}; the training data need at least "
                         f"{num_actions} of {tuple(xn.shape[1:])}")
    else:
        prototypes = prototypes[:num_actions]  # actions the training data never show: no recognizer output
    y_priv = torch.from_numpy(np.stack([subjects] + attr_codes, axis=1))
    channels = 3 * layout.num_joints * x.shape[4]

    def new_adversary(classes: list[int], seed: int, features: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Motion CNN plus statistics MLP (plus feature MLP), trained together."""
        torch.manual_seed(seed)
        net = _recognizer(layout, channels, classes, cfg.adversary_hidden, features)
        for part in net:
            part.standardize_from(xn)
        return net, torch.optim.AdamW(net.parameters(), lr=cfg.adversary_lr, weight_decay=1e-4)

    priv, opt_priv = new_adversary(priv_classes, cfg.seed + 1)
    # The action recognizer is trained on the canonical-body input and then frozen, so the
    # anonymizer must keep the action readable in natural motion rather than hide it in
    # patterns only a co-adapted recognizer understands.
    if cfg.action_teacher_epochs:
        util = train_action_recognizer(layout, xn, y_act, cfg, gen, cfg.seed + 2)
        opt_util = None
    else:  # no frozen recognizer: one adapts to the anonymizer during training (no prototypes)
        util, opt_util = new_adversary([num_actions], cfg.seed + 2)
    if model.teacher is not None:  # the recognizer becomes part of the model (prototype choice)
        model.teacher.load_state_dict(util.state_dict())
        util = model.teacher
        model.prototypes.copy_(prototypes)

    def batches() -> list[torch.Tensor]:
        perm = torch.randperm(len(xn), generator=gen)
        return [perm[i : i + cfg.batch_size] for i in range(0, len(xn), cfg.batch_size)
                if len(perm[i : i + cfg.batch_size]) > 1]

    util.eval()
    if cfg.action_teacher_epochs:
        for p in util.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-4)

    def adversary_step(out: torch.Tensor, idx: torch.Tensor) -> None:
        adversary_step_on(priv, opt_priv, out, y_priv[idx])
        if opt_util is not None:
            adversary_step_on(util, opt_util, out, y_act[idx].unsqueeze(1))

    for epoch in range(cfg.epochs):
        if epoch and cfg.adversary_reset_every and epoch % cfg.adversary_reset_every == 0:
            priv, opt_priv = new_adversary(priv_classes, cfg.seed + 1 + 1000 * epoch)
            with torch.no_grad():  # let the fresh adversary catch up before it is fooled again
                warm = [(model(xn[idx], float(rng.uniform(cfg.keep_ratio_min, cfg.keep_ratio_max)))[0], idx)
                        for idx in batches()]
            for out, idx in warm:
                adversary_step(out, idx)
        totals: dict[str, float] = {"action": 0.0, "privacy": 0.0, "recon": 0.0, "rough": 0.0}
        model.train()
        for idx in batches():
            keep = float(rng.uniform(cfg.keep_ratio_min, cfg.keep_ratio_max))
            xb = xn[idx]
            out, _ = model(xb, keep)
            for _ in range(cfg.adversary_steps):
                adversary_step(out, idx)
            priv.eval()
            util.eval()
            act = sum(F.cross_entropy(part(out)[0], y_act[idx]) for part in util) / len(util)
            privacy = out.sum() * 0.0
            for part in priv:
                p_logits = part(out)
                privacy = privacy + _privacy_term(p_logits[0], y_priv[idx, 0], cfg.privacy_loss)
                for h in range(1, len(p_logits)):
                    privacy = privacy + cfg.attribute_weight * _privacy_term(p_logits[h], y_priv[idx, h], cfg.privacy_loss)
            recon = F.mse_loss(out / model.step, xb / model.step)
            rough = _roughness(out, xb, model.step)
            proto = F.mse_loss(out / model.step, prototypes[y_act[idx]] / model.step)
            loss = (cfg.action_weight * act + cfg.privacy_weight * privacy
                    + cfg.reconstruction_weight * recon + cfg.smoothness_weight * rough
                    + cfg.prototype_weight * proto)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in zip(totals, (act, privacy, recon, rough)):
                totals[k] += float(v.detach()) / max(1, math.ceil(len(xn) / cfg.batch_size))
        log.debug("anonymizer epoch %d: %s", epoch, totals)
        if progress:
            progress(epoch, totals)
    model.eval()
    return model


def _codes(name: str, values: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integer codes, got dtype {a.dtype}")
    return a.astype(np.int64)


# --------------------------------------------------------------------------- persistence


def model_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights .npz, config .json)`` for a model path given with or without suffix."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_anonymizer(model: Anonymizer, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the weights (npz, no pickle) then the config json that names their hash."""
    npz_path, json_path = model_paths(path)
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    weights = buf.getvalue()
    _atomic_write(npz_path, weights)
    meta = {
        "format": "fedsar-anonymizer",
        "version": FORMAT_VERSION,
        "layout": model.layout.name,
        "config": model.config.to_dict(),
        "weights": npz_path.name,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "extra": extra or {},
    }
    _atomic_write(json_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return json_path


def load_anonymizer(path: str | os.PathLike[str]) -> Anonymizer:
    """Read a model written by :func:`save_anonymizer`; errors name the file and field."""
    npz_path, json_path = model_paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"anonymizer config {json_path} does not exist")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != "fedsar-anonymizer":
        raise ValueError(f"{json_path}: field 'format' must be 'fedsar-anonymizer'")
    if meta.get("version") not in (1, 2, FORMAT_VERSION):
        raise ValueError(f"{json_path}: unsupported 'version' {meta.get('version')!r}")
    for key in ("layout", "config", "weights_sha256"):
        if key not in meta:
            raise ValueError(f"{json_path}: missing field {key!r}")
    if not npz_path.is_file():
        raise FileNotFoundError(f"anonymizer weights {npz_path} do not exist")
    weights = npz_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != meta["weights_sha256"]:
        raise ValueError(f"{npz_path}: weights do not match 'weights_sha256' in {json_path}")
    try:
        layout = get_layout(meta["layout"])
        older: dict[str, Any] = {}  # fields that files of earlier versions lack, at the value they meant
        if meta["version"] == 1:
            older["teacher_features"] = False  # written before the feature part
        if meta["version"] <= 2:
            older["teacher_ensemble"] = 1  # written when the model carried one recognizer
        config = AnonymizerConfig.from_dict({**older, **meta["config"]})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{json_path}: {err}") from None
    model = Anonymizer(layout, config)
    with np.load(io.BytesIO(weights), allow_pickle=False) as arrays:
        state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{npz_path}: weights do not fit the config ({err})") from None
    model.eval()
    return model


_CACHE: dict[tuple[str, float], Anonymizer] = {}


def anonymize_arrays(x: np.ndarray, config: AnonymizationConfig, layout: Layout | None = None) -> np.ndarray:
    """What a site does to its arrays ``[N,3,T,V,M]`` before training or export.

    ``layout`` defaults to ``config.layout``; a learned model checks it against its own.
    """
    if config.method == "none":
        return np.array(x, dtype=np.float32, copy=True)
    if config.method == "bones":
        return normalize_bones(x, layout or get_layout(config.layout), config.bones)
    _, json_path = model_paths(config.model_path or "")
    key = (str(json_path.resolve()), json_path.stat().st_mtime if json_path.exists() else 0.0)
    model = _CACHE.get(key)
    if model is None:
        model = load_anonymizer(json_path)
        _CACHE.clear()
        _CACHE[key] = model
    if layout is not None and layout.name != model.layout.name:
        raise ValueError(f"arrays are in layout {layout.name!r}, the anonymizer {json_path} expects {model.layout.name!r}")
    return model.anonymize(x, config.keep_ratio, config.batch_size, config.mix)
