"""A site's standardization of per-sequence statistics, with or without DP.

The statistics branch (:mod:`models.statistics`) and ``python -m privacy.dp_features_bench``
standardize each statistic by a mean and a spread. Three sources:

- the **public** scale of the built-in synthetic sites (no private data, no cost);
- the site's **exact** mean and spread of its training split (no DP guarantee);
- a **DP** release: the site's mean and spread on the public scale by the Gaussian
  mechanism. Each sequence's publicly scaled vector, and then its squared deviation from
  the released mean, is clipped to L2 norm ``clip`` and summed, and each sum gets Gaussian
  noise of standard deviation ``noise * clip``: two releases of sensitivity ``clip``,
  which the site's ledger composes with its DP-SGD steps as ``(noise, 1.0, 2)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from skeletons.layouts import Layout

Scale = tuple[torch.Tensor, torch.Tensor]
Release = tuple[float, float, int]  # (noise multiplier, sample rate, steps), as Opacus's RDP history

# Defaults of the DP release: clip a publicly scaled vector of ~200 statistics at norm
# 15, noise at least 4 (epsilon ~1.5 alone, less once composed with DP-SGD) and at most a
# fifth of a target epsilon spent on the release alone.
SCALE_CLIP = 15.0
MIN_SCALE_NOISE = 4.0
SCALE_BUDGET_SHARE = 0.2
SCALE_RELEASES = 2  # the mean, then the spread around it
_STD_FLOOR = 1e-4
_VAR_FLOOR = 0.05  # on the public scale: released variances below it are noise


@lru_cache(maxsize=8)
def public_scale(layout_name: str, num_frames: int) -> Scale:
    """Mean and spread of the statistics over the built-in synthetic sites' training splits."""
    from skeletons.layouts import get_layout
    from skeletons.scenario import load_scenario
    from skeletons.site_data import load_site

    layout = get_layout(layout_name)
    synthetic = load_scenario("synthetic")
    feats = torch.cat([training_statistics(load_site(spec, None, layout_name, num_frames).x_train, layout)
                       for spec in synthetic.sites])
    return feats.mean(dim=0), feats.std(dim=0).clamp_min(_STD_FLOOR)


def training_statistics(x: Any, layout: Layout) -> torch.Tensor:
    """The statistics ``[N, F]`` of a split ``x [N, 3, T, V, M]`` (array or tensor), computed
    in float64 so that sums over long sequences stay exact."""
    from models.statistics import SQRT_EPS, sequence_statistics

    with torch.no_grad():  # as the branch computes them, so that the scale fits what it reads
        return sequence_statistics(torch.as_tensor(np.asarray(x), dtype=torch.float64), layout, SQRT_EPS).float()


def exact_scale(features: torch.Tensor) -> Scale:
    """The training split's own mean and spread (not private)."""
    return features.mean(dim=0), features.std(dim=0).clamp_min(_STD_FLOOR)


def dp_scale(features: torch.Tensor, public: Scale, clip: float, noise: float,
             generator: torch.Generator | None = None) -> tuple[Scale, Release]:
    """The site's mean and spread by the Gaussian mechanism (module docs); returns the
    scale and the release to compose into the site's accountant. The number of training
    sequences is treated as public, as DP-SGD's sample rate does."""
    if clip <= 0 or noise <= 0:
        raise ValueError(f"the statistics scale release needs clip > 0 and noise > 0, got {clip} and {noise}")
    z = (features.double() - public[0].double()) / public[1].double()

    def noisy_mean(v: torch.Tensor) -> torch.Tensor:
        v = v * (clip / v.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        draw = torch.randn(v.shape[1], generator=generator, dtype=v.dtype)
        return (v.sum(dim=0) + noise * clip * draw) / len(v)

    mean = noisy_mean(z)
    var = noisy_mean((z - mean) ** 2).clamp(min=_VAR_FLOOR)
    scale = (public[0] + (mean * public[1].double()).float(), (public[1].double() * var.sqrt()).float())
    return scale, (float(noise), 1.0, SCALE_RELEASES)


def release_noise(target_epsilon: float | None, delta: float, mechanism: str) -> float:
    """Noise of the DP scale release: at least :data:`MIN_SCALE_NOISE`, and enough that
    the release alone spends at most :data:`SCALE_BUDGET_SHARE` of ``target_epsilon``."""
    from privacy.dp import noise_for_share

    if target_epsilon is None:
        return MIN_SCALE_NOISE
    noise = noise_for_share(target_epsilon, delta, mechanism, SCALE_BUDGET_SHARE, SCALE_RELEASES, "statistics scale")
    return max(MIN_SCALE_NOISE, noise)
