"""What DP-SGD costs per training step: ``python -m privacy.dp_bench``.

Times one optimizer step (forward, backward, clipping, noise, update) of the same model
on the same batch without DP and with each of Opacus's per-sample gradient modes:

- ``hooks``: per-layer hooks materialize every per-sample gradient (the site trainer's
  default; the Adaptive Topology has its own exact sampler in ``models.topology``);
- ``ghost``: ghost clipping computes per-sample gradient *norms* in a first backward and
  the clipped sum in a second one, never materializing per-sample gradients; it needs
  the loss per sample, so it is timed with the cross-entropy loss only;
- ``functorch`` and ``ew`` (expanded weights): generic per-sample gradients through
  ``torch.func`` / expanded weights; reported with the reason when the model is refused.

``--mkd`` adds the FSAR recipe's multi-grain distillation from a frozen teacher to the
``plain`` and ``hooks`` rows (the site trainer's real loss). ``--frozen-blocks K`` leaves
the input stage and blocks 1..K untrained, as a site does on a warm start (the private
recipe), so only the rest is clipped and noised. Results: a table on stdout and, with
``--out``, JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

MODES = ("plain", "hooks", "ghost", "functorch", "ew")


def _model(preset: str, overrides: dict[str, Any], classes: int, seed: int, frozen_blocks: int = 0) -> torch.nn.Module:
    from models import ModelConfig, build_model
    from models.roles import freeze_blocks
    from skeletons.layouts import get_layout

    torch.manual_seed(seed)
    config = ModelConfig.preset(preset)
    if overrides:
        config = config.with_(**overrides)
    model = build_model(get_layout("kinect-v1"), classes, 1, config)
    freeze_blocks(model, frozen_blocks)
    return model


def _loss_fn(mkd: bool, grains: list[int]) -> Callable[..., torch.Tensor]:
    """The site trainer's loss (with MKD when asked) or plain cross-entropy."""
    if not mkd:
        return lambda model, x, y, teacher: F.cross_entropy(model(x), y)
    from client.trainer import TrainConfig, training_loss

    recipe = TrainConfig(grains=grains, lambda_mg=0.5, lambda_kd=0.5, device="cpu", mixed_precision=False)
    return lambda model, x, y, teacher: training_loss(model, x, y, recipe, teacher)[0]


def _on_rows(model: torch.nn.Module, teacher: torch.nn.Module | None, x: torch.Tensor,
             grains: list[int]) -> tuple[torch.nn.Module, torch.nn.Module | None, torch.Tensor]:
    """The head, teacher and rows a site trains on when every block is frozen
    (client.frozen_trunk); the rows are built here, once, outside the timed steps."""
    from client.frozen_trunk import can_cache, head_only_inputs
    from client.trainer import TrainConfig

    recipe = TrainConfig(grains=grains, device="cpu", mixed_precision=False)
    if not can_cache(model, recipe):
        raise SystemExit("--cached-rows needs --frozen-blocks to cover every block of the model")
    head, head_teacher, rows, _ = head_only_inputs(model, teacher, recipe, x, None)
    return head, head_teacher, rows


def make_step(mode: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, mkd: bool) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """A row describing ``mode`` and a function doing one training step (None if refused)."""
    from opacus import PrivacyEngine

    model = _model(args.preset, args.overrides, args.classes, args.seed, args.frozen_blocks)
    teacher = None
    if mkd:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    if args.cached_rows:
        model, teacher, x = _on_rows(model, teacher, x, args.grain_list if mkd else [])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    loss_fn = _loss_fn(mkd, args.grain_list)
    row: dict[str, Any] = {"mode": mode, "mkd": mkd, "params": sum(p.numel() for p in model.parameters()),
                           "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    try:
        if mode == "plain":
            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model, x, y, teacher).backward()
                optimizer.step()
        else:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(y))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                made = PrivacyEngine(accountant="rdp").make_private(
                    module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
                    poisson_sampling=False, grad_sample_mode=mode, criterion=torch.nn.CrossEntropyLoss())
            private, dp_opt = made[0], made[1]
            if mode == "ghost":
                criterion = made[2]

                def step() -> None:
                    dp_opt.zero_grad(set_to_none=True)
                    criterion(private(x), y).backward()
                    dp_opt.step()
            else:
                def step() -> None:
                    dp_opt.zero_grad(set_to_none=True)
                    loss_fn(private, x, y, teacher).backward()
                    dp_opt.step()
        for _ in range(max(1, args.warmup)):  # the first step also tells whether the mode works here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                step()
    except Exception as err:  # noqa: BLE001 - a mode the model does not support is a result too
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        return row, None
    return row, step


def time_round_robin(steps: dict[int, Callable[[], None]], repeats: int) -> dict[int, list[float]]:
    """One step of every mode in turn, ``repeats`` times: a shared, fluctuating CPU load
    then weighs on all modes alike, which keeps the ratios fair."""
    times: dict[int, list[float]] = {i: [] for i in steps}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for i, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[i].append(time.perf_counter() - t0)
    return times


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="slim", help="model preset (slim, wide, reference)")
    parser.add_argument("--model-overrides", default="", help="JSON object of ModelConfig fields")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=52)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode, taken in turn (median reported)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per mode first (at least 1: a mode the model refuses fails there)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mkd", action="store_true", help="also time plain and hooks with the FSAR (MKD) loss")
    parser.add_argument("--grains", default="1,2", help="MKD grains (blocks), e.g. 1")
    parser.add_argument("--frozen-blocks", type=int, default=0,
                        help="leave the input stage and blocks 1..K untrained, as a warm-started site does")
    parser.add_argument("--cached-rows", action="store_true",
                        help="with every block frozen, time steps on the cached rows a site trains on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    args.overrides = json.loads(args.model_overrides) if args.model_overrides else {}
    args.grain_list = [int(g) for g in args.grains.split(",") if g.strip()]
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, args.frames, 20, 1, generator=g)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=g)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {MODES}")
    plan = [(m, False) for m in modes] + ([(m, True) for m in ("plain", "hooks") if m in modes] if args.mkd else [])
    made = [make_step(m, args, x, y, mkd) for m, mkd in plan]
    rows = [row for row, _ in made]
    times = time_round_robin({i: step for i, (_, step) in enumerate(made) if step is not None}, args.steps)
    for i, samples in times.items():
        rows[i].update(seconds=statistics.median(samples), min_s=min(samples), max_s=max(samples), steps=len(samples))
    base = {r["mkd"]: r["seconds"] for r in rows if r["mode"] == "plain" and "seconds" in r}
    for r in rows:
        if "seconds" in r and r["mkd"] in base:
            r["vs_plain"] = r["seconds"] / base[r["mkd"]]
    trained = next((r["trained_params"] for r in rows if "trained_params" in r), 0)
    print(f"model {args.preset} {args.overrides or ''} batch {args.batch_size} x {args.frames} frames, "
          f"{trained} parameters trained (frozen blocks {args.frozen_blocks}"
          f"{', on cached rows' if args.cached_rows else ''}), "
          f"{args.threads} thread(s), median of {args.steps} steps")
    print(f"| loss | mode | s/step | x plain |\n|---|---|---:|---:|")
    for r in rows:
        loss = "CE+MKD" if r["mkd"] else "CE"
        if "error" in r:
            print(f"| {loss} | {r['mode']} | failed: {r['error']} | |")
        else:
            print(f"| {loss} | {r['mode']} | {r['seconds']:.4f} | {r.get('vs_plain', float('nan')):.2f} |")
    if args.out:
        from skeletons.atomic import write_json

        write_json(args.out, {"args": {k: v for k, v in vars(args).items() if k not in ("overrides", "grain_list")},
                              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                              "rows": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m privacy.dp_bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
