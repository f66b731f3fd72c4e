"""A site's classifier started from its class means (run option ``head-start = "class-means"``).

Why: under sample-level DP-SGD the head learns its classes from many noisy steps, and a
site of a few hundred sequences over 58 classes (Kinder-Gator) has a few sequences per
class to learn from. The nearest class mean of the standardized statistics
(:mod:`models.statistics`) keeps much of a trained head's accuracy and costs a single
Gaussian release: each training sequence's statistics, scaled to unit length, adds to its
class's sum, so adding or removing one sequence moves one sum by at most 1 (the
add/remove adjacency of DP-SGD's Poisson sampling), and every sum gets noise of standard
deviation ``noise``. The head starts as the cosine classifier of the noisy sums'
directions (without noise: the nearest class mean), each direction shortened by the share
of it the noise explains, and DP-SGD goes on from there with what is left of the budget.

Under DP the release is written into the site's ledger before any DP-SGD step (as the
statistics scale is, :mod:`privacy.feature_scale`), with noise that spends at most
:data:`CLASS_MEANS_SHARE` of the target epsilon on its own. Without DP the means are
exact. Measured in BENCHMARKS.md ("Class-mean head start").
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

HEAD_START_MODES = ("random", "class-means")
# Of the target epsilon, spent by the release alone: 0.15 starts too noisily, 0.3 and 0.6
# keep no more, 0.8 leaves DP-SGD too little (BENCHMARKS.md, "The class-mean release's
# share of epsilon").
CLASS_MEANS_SHARE = 0.4
LOGIT_SCALE = 20.0  # the started head's logit for a sequence on its class's mean direction


def check_head_start(value: Any, where: str = "run config") -> str:
    """``head-start`` as given, or a ValueError naming the key and the choices."""
    mode = str(value)
    if mode not in HEAD_START_MODES:
        raise ValueError(f"{where} 'head-start' = {value!r} is unknown; choose from {', '.join(HEAD_START_MODES)}")
    return mode


def check_head_start_model(value: Any, model_config: Mapping[str, Any]) -> str:
    """``head-start`` checked against the run's model: class means need its statistics branch."""
    mode = check_head_start(value)
    if mode == "class-means" and not model_config.get("statistics"):
        raise ValueError("run config 'head-start' = 'class-means' needs the statistics branch: add "
                         "model-overrides = {\"statistics\": true} (the private recipe has it)")
    return mode


def check_releases_fit(run_config: Mapping[str, Any], model_config: Mapping[str, Any]) -> None:
    """Under DP with a target epsilon, the statistics branch's scale release (and a
    class-mean head start) must fit within their shares of ``dp-epsilon``; a ValueError
    naming the key before round 1 rather than every site failing in it. A small epsilon
    can be beyond what the RDP accountant's orders show (below about 0.55 at delta 1e-5)."""
    import warnings

    from privacy.dp import DPSettings
    from privacy.feature_scale import release_noise as scale_release_noise

    if not model_config.get("statistics"):
        return
    settings = DPSettings.resolve((run_config, "run config"))
    if settings.epsilon is None:
        return
    with warnings.catch_warnings():  # the PRV accountant's log(0) notices on sample rate 1
        warnings.simplefilter("ignore", RuntimeWarning)
        scale_release_noise(settings.epsilon, settings.delta, settings.accountant)
        if check_head_start(run_config.get("head-start", "random")) == "class-means":
            release_noise(settings)


def class_sums(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums ``[C, F]`` of the rows of ``z`` scaled to unit length: one sequence
    moves one row by at most 1, whatever its statistics (the release's sensitivity)."""
    units = F.normalize(z.double(), dim=1)
    return torch.zeros(num_classes, z.shape[1], dtype=torch.float64).index_add_(0, y.long(), units)


def class_mean_directions(z: torch.Tensor, y: torch.Tensor, num_classes: int, noise: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Directions ``[C, F]`` of :func:`class_sums`, each sum with Gaussian noise of
    standard deviation ``noise`` per coordinate (0: exact), each shortened to the share of
    its released norm that the noise does not explain (:func:`signal_share`)."""
    if noise < 0:
        raise ValueError(f"class-mean release noise must be >= 0, got {noise}")
    sums = class_sums(z, y, num_classes)
    if noise > 0:
        sums += noise * torch.randn(sums.shape, generator=generator, dtype=torch.float64)
    return (F.normalize(sums, dim=1) * signal_share(sums, noise)[:, None]).float()


def signal_share(released: torch.Tensor, noise: float) -> torch.Tensor:
    """Per class, the estimated cosine between a released sum and its noise-free sum: the
    noise adds about ``noise**2 * F`` to a sum's squared norm, so
    ``sqrt(max(|s|**2 - noise**2 * F, 0)) / |s|`` (1 without noise, 0 for a class the noise
    buries). A direction of few sequences then starts the head less sure of itself, so
    DP-SGD does not have to unlearn a confident wrong start. Post-processing of the
    release: it costs no budget."""
    squared = released.pow(2).sum(dim=1).clamp_min(1e-24)
    return ((squared - noise ** 2 * released.shape[1]).clamp_min(0.0) / squared).sqrt()


def start_head(head: nn.Linear, directions: torch.Tensor, logit_scale: float = LOGIT_SCALE) -> None:
    """Set ``head`` (reading ``[pooled + proj(z), z]``) to the classifier of ``directions``
    (at most unit length) on its statistics columns, zero elsewhere: standardized
    statistics have norm about sqrt(F), so a sequence on a unit direction of its class
    scores ``logit_scale``."""
    num_classes, stats_dim = directions.shape
    if head.out_features != num_classes or head.in_features < stats_dim:
        raise ValueError(f"class-mean head start: a head of {head.out_features} classes over "
                         f"{head.in_features} inputs cannot take {num_classes} directions of {stats_dim} statistics")
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, -stats_dim:] = directions.to(head.weight) * (logit_scale / stats_dim ** 0.5)
        if head.bias is not None:
            head.bias.zero_()


def release_noise(settings: Any) -> float:
    """The release's noise for the site's DP ``settings``: at most
    :data:`CLASS_MEANS_SHARE` of a target epsilon on its own, else the site's fixed DP-SGD
    noise multiplier."""
    from privacy.dp import noise_for_share

    if settings.epsilon is None:
        return float(settings.noise_multiplier)
    return noise_for_share(settings.epsilon, settings.delta, settings.accountant, CLASS_MEANS_SHARE, 1,
                           "class-mean")


def start_head_from_class_means(context: Any, config: Mapping[str, Any], site: str, model: nn.Module,
                                x_train: Any, y_train: Any) -> str:
    """Start ``model``'s head from the site's class means (module docs), under the site's
    DP settings a release its ledger counts. Returns "dp" or "exact". Raises
    :class:`privacy.dp.BudgetExhausted` (after writing the decline) when the release
    would exceed the budget, and ValueError for a model without the statistics branch."""
    from privacy.dp import record_release, secret_generator, site_dp_settings

    if getattr(model, "statistics", None) is None:
        raise ValueError("head-start 'class-means' needs the statistics branch "
                         "(model-overrides = {\"statistics\": true})")
    from privacy.feature_scale import training_statistics

    z = model.statistics.standardize(training_statistics(x_train, model.layout))
    y = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    num_classes = model.head.out_features
    settings, ledger_path = site_dp_settings(context, config)
    if not settings.enabled:
        start_head(model.head, class_mean_directions(z, y, num_classes, 0.0))
        return "exact"
    noise = release_noise(settings)
    entry = record_release(context, config, site, settings, ledger_path, "class means", noise, 1, 1.0)
    directions = class_mean_directions(z, y, num_classes, noise, secret_generator())
    start_head(model.head, directions)
    log.info("site %s released its class means (noise %.3g): epsilon %.4f", site, noise, entry["epsilon"])
    return "dp"
