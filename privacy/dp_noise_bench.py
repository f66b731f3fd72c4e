"""How much DP-SGD noise a site's graph network stands:
``python -m privacy.dp_noise_bench --scenario hetero-datasets --data-root DIR --site msr-action3d``.

A target epsilon hides two things: the noise multiplier it plans and what that noise does
to the model. This trains one site of a scenario alone (the scenario's model, batch size,
optimizer, learning rate and the site's own recipe; a fresh optimizer every round, as a
site gets) once without DP and once per fixed noise multiplier, with Opacus's Poisson
sampling and per-sample clipping, and prints the test top-1 next to the epsilon each
multiplier spends over the whole run (RDP accountant). Noise 0 is clipping alone.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.trainer import TrainConfig, evaluate, make_optimizer, train
from privacy.dp import _release
from skeletons.atomic import write_report
from skeletons.scenario import Scenario, SiteSpec
from skeletons.site_data import SiteArrays, load_site


def epsilon_spent(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps (infinite without noise)."""
    if noise <= 0:
        return math.inf
    from privacy.ledger import epsilon_of  # the accounting a site's budget uses

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        return epsilon_of([(noise, sample_rate, steps)], "rdp", delta)


def site_recipe(scenario: Scenario, spec: SiteSpec, args: argparse.Namespace) -> TrainConfig:
    """A round's recipe as the site builds it from the scenario's run config (its own
    augmentation winning), with this command's overrides; no distillation, on the CPU."""
    from client.site import round_train_config

    overrides = {"local-epochs": args.local_epochs, "batch-size": args.batch_size, "learning-rate": args.lr,
                 "optimizer": args.optimizer}
    config = {**scenario.defaults, **{k: v for k, v in overrides.items() if v}, "mkd": False, "device": "cpu"}
    return round_train_config(config, seed=args.seed, site_recipe=spec.recipe)


def site_model(scenario: Scenario, spec: SiteSpec, arrays: SiteArrays, seed: int) -> torch.nn.Module:
    from client.site import site_model_config
    from models import ModelConfig, build_model
    from server.federation import model_config_for
    from skeletons.layouts import get_layout

    config = site_model_config(ModelConfig.from_dict(model_config_for(scenario, "slim")), spec.recipe)
    torch.manual_seed(seed)
    return build_model(get_layout(scenario.layout), arrays.num_classes, 1, config)


def one_run(scenario: Scenario, spec: SiteSpec, arrays: SiteArrays, recipe: TrainConfig, rounds: int,
            noise: float | None, max_grad_norm: float) -> float:
    """Test top-1 after ``rounds`` rounds of local training without DP (``noise`` None) or
    with this noise multiplier."""
    from dataclasses import replace

    from opacus import PrivacyEngine

    model = site_model(scenario, spec, arrays, recipe.seed)
    x = torch.as_tensor(np.asarray(arrays.x_train, dtype=np.float32))
    y = torch.as_tensor(np.asarray(arrays.y_train, dtype=np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=recipe.batch_size)
    for round_ in range(1, rounds + 1):
        this_round = replace(recipe, seed=recipe.seed + round_)
        if noise is None:
            train(model, (x, y), this_round)
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            private, optimizer, private_loader = PrivacyEngine(accountant="rdp").make_private(
                module=model, optimizer=make_optimizer(model, this_round), data_loader=loader,
                noise_multiplier=noise, max_grad_norm=max_grad_norm, poisson_sampling=True)
            train(private, private_loader, this_round, optimizer=optimizer)
        _release(private)  # the next round wraps the same network afresh
    return evaluate(model, (arrays.x_test, arrays.y_test), "cpu")["accuracy"]


def run_bench(scenario: Scenario, data_root: str | None, args: argparse.Namespace) -> dict[str, Any]:
    specs = {s.name: s for s in scenario.sites}
    if args.site not in specs:
        raise SystemExit(f"--site {args.site!r} is not a site of {scenario.name}; its sites: {', '.join(specs)}")
    spec = specs[args.site]
    arrays = load_site(spec, data_root, scenario.layout, scenario.num_frames)
    recipe = site_recipe(scenario, spec, args)
    rounds = args.rounds or int(scenario.defaults.get("num-server-rounds", 8))
    batches = max(1, math.ceil(len(arrays.y_train) / recipe.batch_size))
    rate, steps = 1.0 / batches, batches * recipe.epochs * rounds
    rows = []
    for noise in args.noise:
        start = time.perf_counter()
        top1 = one_run(scenario, spec, arrays, recipe, rounds, noise, args.max_grad_norm)
        epsilon = epsilon_spent(noise, rate, steps, args.delta) if noise is not None else None
        rows.append({"noise_multiplier": noise, "epsilon": epsilon, "top1": top1,
                     "seconds": time.perf_counter() - start})
        label = "no DP" if noise is None else f"noise {noise:g} (epsilon {epsilon:.4g})"
        print(f"{spec.name}: {label}: test top-1 {100 * top1:.1f}%", flush=True)
    return {"scenario": scenario.name, "site": spec.name, "train": int(len(arrays.y_train)),
            "classes": arrays.num_classes, "sample_rate": rate, "steps": steps, "delta": args.delta,
            "rounds": rounds, "max_grad_norm": args.max_grad_norm, "recipe": recipe.to_dict(), "runs": rows}


def parse_noise(text: str) -> list[float | None]:
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("off", "none"):
            out.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--noise: {part!r} is neither a number nor 'off'") from None
        if not (math.isfinite(value) and value >= 0):
            raise argparse.ArgumentTypeError(f"--noise: {part!r} must be a number >= 0")
        out.append(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from skeletons.scenario import scenario_for_command

    parser = argparse.ArgumentParser(prog="python -m privacy.dp_noise_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, help="built-in scenario name or a .toml path")
    parser.add_argument("--data-root", default=None, help="folder holding the real data sets")
    parser.add_argument("--site", required=True, help="the scenario site to train")
    parser.add_argument("--noise", type=parse_noise, default=parse_noise("off,0,0.1,0.3,1"),
                        help="comma-separated noise multipliers; 'off' trains without DP")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="per-sample clipping norm")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--rounds", type=int, default=0, help="0: the scenario's num-server-rounds")
    parser.add_argument("--local-epochs", type=int, default=0, help="0: the scenario's")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the scenario's")
    parser.add_argument("--lr", type=float, default=0.0, help="0: the scenario's")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default: the scenario's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.max_grad_norm <= 0 or not 0 < args.delta < 1 or min(args.rounds, args.local_epochs, args.batch_size,
                                                                 args.lr) < 0:
        parser.error("--max-grad-norm must be > 0, --delta in (0, 1); --rounds, --local-epochs, --batch-size "
                     "and --lr >= 0")
    torch.set_num_threads(1)
    scenario = scenario_for_command(parser, args.scenario, args.data_root)
    report = run_bench(scenario, args.data_root, args)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
