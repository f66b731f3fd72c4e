"""What DP-SGD costs a model with few parameters on strong features:
``python -m privacy.dp_features_bench --scenario hetero-datasets --data-root DIR``.

The sites' graph network loses most of its accuracy at epsilon 8 because its 95k
parameters share the noise of a few hundred sequences (BENCHMARKS.md, "Differential
privacy"). This measures the other end: a softmax classifier (or a one-hidden-layer MLP)
on the per-sequence statistics of ``privacy.attackers.sequence_features``, trained alone
on each site with and without Opacus DP-SGD (Poisson sampling, per-sample clipping, RDP
accountant, the planned noise for the target epsilon over all epochs).

The features must be standardized. ``--standardize synthetic`` takes the scale from the
built-in synthetic sites (public, so it costs no privacy); ``dp`` refines that scale with
the site's own mean and spread released by the Gaussian mechanism (each sequence's
feature vector clipped, two releases), and the accountant composes both releases with
DP-SGD within the same epsilon; ``private`` takes the scale from the site's training
split without noise, which DP does NOT cover (the ceiling for ``dp``); ``none`` leaves the
features as they are.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from privacy.attackers import sequence_features
from privacy.dp import noise_for_budget
from privacy.feature_scale import Release, dp_scale, public_scale
from skeletons.atomic import write_report
from skeletons.layouts import get_layout
from skeletons.scenario import Scenario
from skeletons.site_data import load_site

STANDARDIZE = ("synthetic", "dp", "private", "none")


def site_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                  num_classes: int, epsilon: float | None, args: argparse.Namespace,
                  before: list[Release] | None = None) -> dict[str, float]:
    """Top-1 of a classifier trained on one site's features; ``epsilon`` None: no DP.

    ``before`` holds earlier releases from the same data; DP-SGD gets what they leave."""
    torch.manual_seed(args.seed)
    dim = x_train.shape[1]
    model: nn.Module = (nn.Linear(dim, num_classes) if args.hidden == 0 else
                        nn.Sequential(nn.Linear(dim, args.hidden), nn.ReLU(), nn.Linear(args.hidden, num_classes)))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train),
                                         batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    engine = None
    if epsilon is not None:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus's note on its non-cryptographic RNG
            engine = PrivacyEngine(accountant="rdp")
            sample_rate = 1.0 / len(loader)
            noise = noise_for_budget(before or [], "rdp", epsilon, args.delta, sample_rate, args.epochs * len(loader))
            model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
                max_grad_norm=args.max_grad_norm)
            engine.accountant.history = list(before or [])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook")  # Opacus's hooks on an input without grad
        for _ in range(args.epochs):
            for xb, yb in loader:
                if len(xb) == 0:  # an empty Poisson batch
                    continue
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        top1 = float((model(x_test).argmax(dim=1) == y_test).float().mean())
    spent = float(engine.get_epsilon(args.delta)) if engine is not None else float("inf")
    return {"top1": top1, "epsilon": spent}


def run_bench(scenario: Scenario, data_root: str | None, args: argparse.Namespace) -> dict[str, Any]:
    layout = get_layout(scenario.layout)
    public = public_scale(scenario.layout, scenario.num_frames) if args.standardize in ("synthetic", "dp") else None
    scale = public if args.standardize == "synthetic" else None
    sites: dict[str, Any] = {}
    for spec in scenario.sites:
        arrays = load_site(spec, data_root, scenario.layout, scenario.num_frames, scenario.num_persons, args.seed)
        f_train = torch.from_numpy(sequence_features(arrays.x_train, layout))
        f_test = torch.from_numpy(sequence_features(arrays.x_test, layout))
        before: list[Release] = []
        if args.standardize == "private":
            scale = (f_train.mean(dim=0), f_train.std(dim=0).clamp_min(1e-4))
        if args.standardize == "dp":
            scale, release = dp_scale(f_train, public, args.scale_clip, args.scale_noise,
                                      torch.Generator().manual_seed(args.seed + 7))
            before = [release]
        if scale is not None:
            f_train, f_test = (f_train - scale[0]) / scale[1], (f_test - scale[0]) / scale[1]
        y_train, y_test = torch.from_numpy(arrays.y_train), torch.from_numpy(arrays.y_test)
        sites[spec.name] = {
            "no_dp": site_accuracy(f_train, y_train, f_test, y_test, arrays.num_classes, None, args)["top1"],
            "dp": site_accuracy(f_train, y_train, f_test, y_test, arrays.num_classes, args.epsilon, args, before),
            "train": int(len(y_train)), "classes": arrays.num_classes,
        }
        print(f"{spec.name}: {100 * sites[spec.name]['no_dp']:.1f}% without DP, "
              f"{100 * sites[spec.name]['dp']['top1']:.1f}% at epsilon {sites[spec.name]['dp']['epsilon']:.2f}", flush=True)
    return {
        "sites": sites,
        "mean_no_dp": statistics.fmean(s["no_dp"] for s in sites.values()),
        "mean_dp": statistics.fmean(s["dp"]["top1"] for s in sites.values()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "data_root")},
    }


def main(argv: list[str] | None = None) -> int:
    from skeletons.scenario import scenario_for_command

    parser = argparse.ArgumentParser(prog="python -m privacy.dp_features_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, help="built-in scenario name or a .toml path")
    parser.add_argument("--data-root", default=None, help="folder holding the real data sets")
    parser.add_argument("--epsilon", type=float, default=8.0, help="target epsilon over all epochs")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="per-sample clipping norm")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=128, help="expected (Poisson) batch size")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--hidden", type=int, default=0, help="0: softmax classifier; N: one hidden layer of N")
    parser.add_argument("--standardize", choices=STANDARDIZE, default="synthetic")
    parser.add_argument("--scale-clip", type=float, default=15.0,
                        help="dp scale: L2 clip of a sequence's publicly scaled feature vector")
    parser.add_argument("--scale-noise", type=float, default=4.0,
                        help="dp scale: noise multiplier of the two Gaussian releases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.epsilon <= 0 or args.epochs < 1 or args.batch_size < 1:
        parser.error("--epsilon must be > 0, --epochs and --batch-size >= 1")
    torch.set_num_threads(1)
    scenario = scenario_for_command(parser, args.scenario, args.data_root)
    report = run_bench(scenario, args.data_root, args)
    report["scenario"] = scenario.name
    print(f"\n{scenario.name}: mean {100 * report['mean_no_dp']:.1f}% without DP, "
          f"{100 * report['mean_dp']:.1f}% at epsilon {args.epsilon:g} (standardize: {args.standardize})")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
