"""Training throughput benchmark of the model presets: samples/s, parameters, FLOPs.

Run ``python -m simulations.throughput`` (see ``--help``). The default input is the
NW-UCLA shape (52 frames, 20 joints, 1 person) at batch 16; each preset is timed over
full SGD steps (forward, backward, update) after warm-up steps, and the best of
``--repeats`` timings is reported, which is the least disturbed by other processes.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add
counts as two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models import ModelConfig, build_model
from skeletons.layouts import get_layout


def count_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(forward FLOPs, training-step FLOPs) per sample."""
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x[:1])
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(model(x[:1]), y[:1]).backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops(), step.get_total_flops()


def time_training(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int,
    repeats: int,
) -> float:
    """Best samples/s over ``repeats`` runs of ``steps`` SGD steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, steps * len(x) / (time.perf_counter() - t0))
    return best


def benchmark(
    presets: Sequence[str | tuple[str, ModelConfig]], batch_size: int = 16, frames: int = 52, layout: str = "kinect-v1",
    persons: int = 1, classes: int = 10, steps: int = 10, warmup: int = 3, repeats: int = 3,
) -> list[dict[str, Any]]:
    lay = get_layout(layout)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, frames, lay.num_joints, persons, generator=gen)
    y = torch.randint(0, classes, (batch_size,), generator=gen)
    rows = []
    for entry in presets:
        name, config = (entry, ModelConfig.preset(entry)) if isinstance(entry, str) else entry
        torch.manual_seed(0)
        model = build_model(lay, classes, persons, config)
        fwd, step = count_flops(model, x, y)
        rate = time_training(model, x, y, steps, warmup, repeats)
        rows.append({
            "preset": name,
            "params": sum(p.numel() for p in model.parameters()),
            "forward_gflops": fwd / 1e9,
            "train_step_gflops": step / 1e9,
            "train_samples_per_s": rate,
        })
        print(f"{name:<10} params {rows[-1]['params'] / 1e6:6.3f}M  "
              f"forward {fwd / 1e9:6.3f} GFLOPs/sample  train step {step / 1e9:6.3f} GFLOPs/sample  "
              f"{rate:7.1f} samples/s", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="slim,fast,wide,reference",
                        help="comma-separated model presets (default: slim,fast,wide,reference); an "
                             "ensemble of K members trains at 1/K of its member's rate")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME=JSON',
                        help='also time the slim preset with ModelConfig fields changed, e.g. '
                             '\'slim-ms={"temporal": "multiscale"}\' (repeatable)')
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=52)
    parser.add_argument("--layout", default="kinect-v1")
    parser.add_argument("--persons", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for p in presets:
        try:
            ModelConfig.preset(p)
        except ValueError as err:
            parser.error(str(err))
    entries: list[str | tuple[str, ModelConfig]] = list(presets)
    for item in args.variant:
        name, sep, text = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError("expected NAME=JSON")
            entries.append((name, ModelConfig.from_dict({**ModelConfig().to_dict(), **json.loads(text)})))
        except (ValueError, TypeError) as err:
            parser.error(f"--variant {item!r}: {err}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.1f}; batch "
          f"{args.batch_size}, {args.frames} frames, layout {args.layout}, {args.persons} person(s)",
          flush=True)
    rows = benchmark(entries, args.batch_size, args.frames, args.layout, args.persons,
                     steps=args.steps, repeats=args.repeats)
    if args.out:
        from skeletons.atomic import write_json

        write_json(args.out, {
            "rows": rows, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "batch_size": args.batch_size, "frames": args.frames,
            "layout": args.layout, "persons": args.persons, "torch": torch.__version__,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
