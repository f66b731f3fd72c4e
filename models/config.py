"""Model hyper-parameters: one dataclass, a slim CPU default and named presets.

The slim default is sized for training on a small CPU (a laptop or a site's server
without an accelerator); the presets trade speed for capacity on a GPU. A config is
plain data so it can be written next to a checkpoint as JSON and read back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

STREAMS = ("joint", "bone", "motion")
TEMPORAL_KINDS = ("full", "separable", "multiscale")


@dataclass(frozen=True)
class ModelConfig:
    """Width, depth and temporal kernel of the network.

    ``channels[b]`` and ``strides[b]`` describe block ``b + 1``; a stride of 2 halves
    the frame axis. ``streams`` are the input channels the network derives from the
    joint coordinates: positions, bone vectors (joint minus parent) and motion
    (frame difference), three channels each. ``temporal`` picks a full ``k x 1``
    convolution, a depthwise ``k x 1`` convolution followed by a pointwise one, or
    ``multiscale`` branches (dilations 1 and 2, max pool, 1x1; channels divisible by 4).
    ``input_norm`` normalizes each stream per sample (GroupNorm, one group per
    stream) so that small motion vectors weigh as much as positions.
    ``input_range`` rescales each sample's coordinates per axis to ``[-1, 1]`` (over
    its present joints) before the streams are derived: invariance to body size,
    distance and aspect that helps when views or sensors differ.
    ``statistics`` lets the head read per-sequence statistics of the joints (bone
    lengths, posture, speeds; :mod:`models.statistics`), standardized by the site's own
    scale, and adds their linear projection to the pooled embedding: few parameters on
    strong features, what a site can still train under DP-SGD on frozen graph blocks.
    ``statistics_projection`` (with ``statistics``) keeps that projection; without it the
    head reads ``[pooled, z]`` alone, and under DP-SGD only the head shares the clipping
    bound and the noise.
    """

    channels: tuple[int, ...] = (32, 32, 64, 64, 128, 128)
    strides: tuple[int, ...] = (1, 1, 2, 1, 2, 1)
    temporal_kernel: int = 9
    temporal: str = "full"
    streams: tuple[str, ...] = STREAMS
    norm_groups: int = 8
    input_norm: bool = False
    input_range: bool = False
    dropout: float = 0.0
    topology_init_std: float = 1e-3
    statistics: bool = False
    statistics_projection: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "streams", tuple(str(s) for s in self.streams))
        if not self.channels:
            raise ValueError("ModelConfig.channels: at least one block is needed")
        if len(self.strides) != len(self.channels):
            raise ValueError(
                f"ModelConfig.strides has {len(self.strides)} entries, channels has "
                f"{len(self.channels)}; give one stride per block"
            )
        if any(c <= 0 for c in self.channels):
            raise ValueError(f"ModelConfig.channels must be positive, got {self.channels}")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"ModelConfig.strides must be 1 or 2, got {self.strides}")
        if self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
            raise ValueError(
                f"ModelConfig.temporal_kernel must be odd and positive, got {self.temporal_kernel}"
            )
        if self.temporal not in TEMPORAL_KINDS:
            raise ValueError(
                f"ModelConfig.temporal {self.temporal!r} unknown; choose from {TEMPORAL_KINDS}"
            )
        unknown = [s for s in self.streams if s not in STREAMS]
        if unknown or not self.streams or len(set(self.streams)) != len(self.streams):
            raise ValueError(
                f"ModelConfig.streams {self.streams} invalid; use distinct names from {STREAMS}"
            )
        bad = [c for c in self.channels if c % self.norm_groups]
        if self.norm_groups < 1 or bad:
            raise ValueError(
                f"ModelConfig.norm_groups={self.norm_groups} must divide every channel width "
                f"(not {bad})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_blocks(self) -> int:
        return len(self.channels)

    @property
    def in_channels(self) -> int:
        return 3 * len(self.streams)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """A named configuration: ``slim`` (CPU default), ``wide`` (GPU), ``reference``."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}"
            ) from None

    def with_(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated like a new config)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Read a config written by :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config has unknown fields: {', '.join(unknown)}")
        return cls(**data)


_REFERENCE_CHANNELS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
_REFERENCE_STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)

PRESETS: dict[str, ModelConfig] = {
    "slim": ModelConfig(),
    # slim's widths, the time axis halved already in block 1 (slim: block 3) and a
    # 5-frame kernel: half the FLOPs, about 2.4 times slim's training speed on a CPU.
    "fast": ModelConfig(strides=(2, 1, 2, 1, 1, 1), temporal_kernel=5),
    # GPU: the depth and width of the common ST-GCN / CTR-GCN backbones.
    "wide": ModelConfig(
        channels=_REFERENCE_CHANNELS, strides=_REFERENCE_STRIDES, temporal_kernel=9,
        dropout=0.0,
    ),
    # CTR-GCN-sized backbone, the yardstick for throughput comparisons.
    "reference": ModelConfig(
        channels=_REFERENCE_CHANNELS, strides=_REFERENCE_STRIDES, temporal_kernel=5,
        streams=("joint",),
    ),
}
