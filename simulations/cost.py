"""Estimated time and memory per round of the ``fsar-paper`` benchmark at full scale.

Nothing here trains on the real data sets. The figures combine

- measured on this machine: FLOPs per sample of the scenario's model (forward, and a
  full training step with multi-grain distillation, counted by
  ``torch.utils.flop_counter.FlopCounterMode``), activation bytes kept for the backward
  pass per sample (every tensor autograd saves, counted once per storage), parameter
  bytes, and CPU training samples per second;
- facts: the published training/test sizes of the five data sets (:data:`FULL_SCALE`);
- an assumption: the sustained fraction of a GPU's dense bf16 peak this workload
  reaches (:data:`GPU_PEAK_TFLOPS`, :data:`SUSTAINED_FRACTIONS`).

Every derived time is an estimate and is labelled so. ``python -m simulations.cost``
or ``fedsar-sim cost`` prints the table; ``--json`` the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

SCENARIO = "fsar-paper"


@dataclass(frozen=True)
class DatasetScale:
    """Training and test sequences of one site's data set under the scenario's split."""

    site: str
    train: int
    test: int
    classes: int
    source: str


# Published sizes. NTU splits count every listed sample; the common preprocessing drops
# the sequences whose skeleton files are missing or empty (302 in NTU-60, 535 in NTU-120).
FULL_SCALE: tuple[DatasetScale, ...] = (
    DatasetScale(
        "ntu60", 40_320, 16_560, 60,
        "Shahroudy et al., NTU RGB+D, CVPR 2016: 56,880 sequences, cross-subject 40,320 train / "
        "16,560 test (40,091 / 16,487 without the 302 missing skeletons)"),
    DatasetScale(
        "ntu120", 63_026, 50_919, 120,
        "Liu et al., NTU RGB+D 120, TPAMI 2020: 114,480 sequences, 53 training performers; "
        "63,026 / 50,919 once the 535 missing skeletons are dropped"),
    DatasetScale(
        "pku-mmd-1", 18_841, 3_247, 51,
        "Liu et al., PKU-MMD, arXiv:1703.07475 (2017): 1,076 videos, 51 classes, 66 subjects, "
        "21,545 labelled instances; cross-subject split of the official list as reported by "
        "follow-up skeleton papers: 18,841 / 3,247"),
    DatasetScale(
        "pku-mmd-2", 5_332, 1_613, 41,
        "PKU-MMD part II (same authors): 1,009 videos, 41 classes, 13 subjects; cross-subject "
        "5,332 / 1,613 trimmed instances as reported by follow-up skeleton papers"),
    DatasetScale(
        "uestc", 17_920, 7_680, 40,
        "Ji et al., UESTC varying-view RGB-D, arXiv:1904.10681 (2019): 25,600 sequences of "
        "118 persons, 40 classes; the scenario tests on 30% of the persons (about 7,680)"),
)

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets.
GPU_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "A100": 312.0}
# Sustained share of that peak assumed for this workload. Its convolutions have 64-256
# channels over 25-50 joints, its graph products are small batched matmuls, and
# GroupNorm, ReLU and the loss are memory-bound work FlopCounterMode does not count, so
# 30-40% would be optimistic; 5-25% is the range used for the estimates.
SUSTAINED_FRACTIONS = {"low": 0.05, "mid": 0.12, "high": 0.25}
CUDA_CONTEXT_GIB = 0.5  # per process (one per site actor sharing the GPU), assumed
BF16_ACTIVATION_FACTOR = 0.6  # autocast keeps norms and reductions in float32; assumed


@dataclass
class ModelCost:
    """What one sample costs the scenario's model (measured here, CPU, float32)."""

    config: dict[str, Any]
    num_frames: int
    num_persons: int
    parameters: int
    forward_flops: float  # one sample, inference
    train_flops_first_round: float  # one sample, step without distillation (round 1)
    train_flops: float  # one sample, step with multi-grain distillation (rounds 2+)
    activation_bytes: float  # saved for backward, one sample, float32, with distillation
    cpu_samples_per_s: float | None  # training samples/s measured on this CPU
    cpu_threads: int
    grains: list[int]


def scenario_model(preset: str = "slim", overrides: dict[str, Any] | None = None):
    """The scenario, its ModelConfig fields and a model built as the run builds it."""
    from models import ModelConfig, build_model
    from server.federation import model_config_for
    from skeletons.layouts import get_layout
    from skeletons.scenario import load_scenario

    scenario = load_scenario(SCENARIO)
    config = model_config_for(scenario, preset, overrides)
    model = build_model(get_layout(scenario.layout), 60, scenario.num_persons, ModelConfig(**config))
    return scenario, config, model


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of the matmul/convolution kernels ``fn`` runs (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def saved_bytes(fn: Callable[[], Any], exclude: set[int]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` runs.

    Storages are counted once however many operations save them; ``exclude`` holds the
    storage addresses of the parameters, which are not activations.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def _step_fn(model, teacher, x, y, grains: list[int]) -> Callable[[], Any]:
    from client.trainer import TrainConfig, training_loss

    config = TrainConfig(grains=grains, lambda_mg=0.5, lambda_kd=0.5, device="cpu")

    def step():
        model.zero_grad(set_to_none=True)
        loss, _, _ = training_loss(model, x, y, config, teacher if grains else None)
        loss.backward()
        return loss

    return step


def _loss_fn(model, teacher, x, y, grains: list[int]) -> Callable[[], Any]:
    from client.trainer import TrainConfig, training_loss

    config = TrainConfig(grains=grains, lambda_mg=0.5, lambda_kd=0.5, device="cpu")
    return lambda: training_loss(model, x, y, config, teacher if grains else None)[0]


def measure(preset: str = "slim", overrides: dict[str, Any] | None = None, batch: int = 4,
            cpu_steps: int = 3, seed: int = 0) -> ModelCost:
    """Measure the scenario's model on this CPU with small random batches."""
    torch.manual_seed(seed)
    scenario, config, model = scenario_model(preset, overrides)
    grains = [int(g) for g in str(scenario.defaults.get("grains", "1,2")).split(",") if g.strip()]
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    shape = (3, scenario.num_frames, model.layout.num_joints, scenario.num_persons)

    def batch_of(n: int):
        return torch.randn(n, *shape), torch.randint(0, model.num_classes, (n,))

    x, y = batch_of(batch)
    model.eval()
    with torch.no_grad():
        forward = count_flops(lambda: model(x)) / batch
    model.train()
    first = count_flops(_step_fn(model, teacher, x, y, [])) / batch
    full = count_flops(_step_fn(model, teacher, x, y, grains)) / batch
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {p.untyped_storage().data_ptr() for p in teacher.parameters()}
    small, large = max(1, batch // 2), batch
    sizes = [saved_bytes(_loss_fn(model, teacher, *batch_of(n), grains), params) for n in (small, large)]
    per_sample = (sizes[1] - sizes[0]) / (large - small)
    cpu = _cpu_rate(model, teacher, batch_of, batch, grains, cpu_steps) if cpu_steps > 0 else None
    return ModelCost(
        config=config, num_frames=scenario.num_frames, num_persons=scenario.num_persons,
        parameters=sum(p.numel() for p in model.parameters()), forward_flops=forward,
        train_flops_first_round=first, train_flops=full, activation_bytes=per_sample,
        cpu_samples_per_s=cpu, cpu_threads=torch.get_num_threads(), grains=grains,
    )


def _cpu_rate(model, teacher, batch_of, batch: int, grains: list[int], steps: int) -> float:
    """Training samples per second (forward, distillation, backward, SGD step) on this CPU."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = batch_of(batch)
    step = _step_fn(model, teacher, x, y, grains)
    step()
    optimizer.step()  # warm-up: allocations, kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


@dataclass
class SiteEstimate:
    """Estimated cost of one site in one round (``local-epochs`` passes over its training set)."""

    site: str
    train: int
    test: int
    train_pflop: float  # per round, with distillation
    eval_pflop: float  # one evaluation of the test split
    host_gib: float  # preprocessed float32 train+test arrays in host memory
    gpu_gib: float  # one site process on the GPU at the run's batch size


def estimate(cost: ModelCost, batch_size: int = 64, local_epochs: int = 1,
             scales: tuple[DatasetScale, ...] = FULL_SCALE) -> dict[str, Any]:
    """Per-site and per-round estimates for the full data sets (all figures estimates)."""
    sample_bytes = 4 * 3 * cost.num_frames * 25 * cost.num_persons
    param_bytes = 4 * cost.parameters
    # weights, gradients, SGD momentum, the frozen teacher, the received global copy
    state_gib = 5 * param_bytes / 2**30
    act_gib = batch_size * cost.activation_bytes * BF16_ACTIVATION_FACTOR / 2**30
    sites = []
    for s in scales:
        sites.append(SiteEstimate(
            site=s.site, train=s.train, test=s.test,
            train_pflop=local_epochs * s.train * cost.train_flops / 1e15,
            eval_pflop=s.test * cost.forward_flops / 1e15,
            host_gib=(s.train + s.test) * sample_bytes / 2**30,
            # backward keeps gradients of activations alive next to them: x1.5
            gpu_gib=CUDA_CONTEXT_GIB + state_gib + 1.5 * act_gib,
        ))
    train_pflop = sum(s.train_pflop for s in sites)
    eval_pflop = sum(s.eval_pflop for s in sites)
    times = {}
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        times[gpu] = {
            name: {
                "sustained_tflops": peak * frac,
                "train_round_s": train_pflop * 1e3 / (peak * frac),
                "eval_s": eval_pflop * 1e3 / (peak * frac),
            }
            for name, frac in SUSTAINED_FRACTIONS.items()
        }
    cpu_round_h = None
    if cost.cpu_samples_per_s:
        cpu_round_h = sum(s.train for s in scales) * local_epochs / cost.cpu_samples_per_s / 3600
    return {
        "label": "ESTIMATES from FLOP counts and an assumed sustained GPU throughput; not measured on a GPU",
        "batch_size": batch_size,
        "local_epochs": local_epochs,
        "sites": [asdict(s) for s in sites],
        "round": {
            "train_pflop": train_pflop,
            "eval_pflop": eval_pflop,
            "host_gib_all_sites": sum(s.host_gib for s in sites),
            "gpu_gib_all_sites_on_one_gpu": sum(s.gpu_gib for s in sites),
            "gpu_time_s": times,
            "cpu_round_hours_here": cpu_round_h,
        },
        "assumptions": {
            "gpu_peak_tflops_bf16_dense": GPU_PEAK_TFLOPS,
            "sustained_fraction_of_peak": SUSTAINED_FRACTIONS,
            "cuda_context_gib_per_site": CUDA_CONTEXT_GIB,
            "bf16_activation_factor": BF16_ACTIVATION_FACTOR,
            "flops": "matmul and convolution FLOPs (FlopCounterMode); elementwise work is not counted",
        },
        "data_sets": [asdict(s) for s in scales],
    }


def report(cost: ModelCost, est: dict[str, Any]) -> str:
    """The human-readable table."""
    mib = 2**20
    lines = [
        f"fsar-paper model: channels {list(cost.config['channels'])}, strides {list(cost.config['strides'])}, "
        f"temporal kernel {cost.config['temporal_kernel']}, streams {list(cost.config['streams'])}; "
        f"{cost.parameters / 1e6:.2f} M parameters; input [N, 3, {cost.num_frames}, 25, {cost.num_persons}]",
        "",
        "MEASURED here (CPU, float32, per sample):",
        f"  forward                          {cost.forward_flops / 1e9:8.2f} GFLOP",
        f"  training step, round 1 (no MKD)  {cost.train_flops_first_round / 1e9:8.2f} GFLOP "
        f"({cost.train_flops_first_round / cost.forward_flops:.1f}x forward)",
        f"  training step with MKD grains {','.join(map(str, cost.grains)):<3}{cost.train_flops / 1e9:8.2f} GFLOP "
        f"({cost.train_flops / cost.forward_flops:.1f}x forward)",
        f"  activations saved for backward   {cost.activation_bytes / mib:8.1f} MiB",
    ]
    if cost.cpu_samples_per_s:
        lines.append(f"  CPU training throughput          {cost.cpu_samples_per_s:8.2f} samples/s "
                     f"({cost.cpu_threads} threads, shared machine)")
    r = est["round"]
    lines += [
        "",
        f"ESTIMATES for the full data sets ({est['local_epochs']} local epoch, batch {est['batch_size']}, "
        "bf16 autocast on CUDA):",
        f"  {'site':<10} {'train':>7} {'test':>7} {'PFLOP/round':>12} {'host GiB':>9} {'GPU GiB/site':>13}",
    ]
    for s in est["sites"]:
        lines.append(f"  {s['site']:<10} {s['train']:>7} {s['test']:>7} {s['train_pflop']:>12.1f} "
                     f"{s['host_gib']:>9.1f} {s['gpu_gib']:>13.1f}")
    lines += [
        f"  all sites: {r['train_pflop']:.1f} PFLOP training + {r['eval_pflop']:.1f} PFLOP per evaluation; "
        f"host memory for the arrays {r['host_gib_all_sites']:.1f} GiB; "
        f"GPU memory if all five share one GPU {r['gpu_gib_all_sites_on_one_gpu']:.1f} GiB",
        "",
        "  round time on one GPU (all sites sharing it), by assumed sustained share of the bf16 dense peak:",
    ]
    for gpu, by_level in r["gpu_time_s"].items():
        parts = [f"{level} {v['sustained_tflops']:.0f} TFLOP/s: {_duration(v['train_round_s'])}"
                 for level, v in by_level.items()]
        lines.append(f"    {gpu:<10} " + "; ".join(parts))
    if r["cpu_round_hours_here"]:
        lines.append(f"  one round on this CPU at the measured rate: about {r['cpu_round_hours_here']:.0f} hours")
    lines += ["", "Data set sizes:"] + [f"  {d['site']}: {d['source']}" for d in est["data_sets"]]
    lines.append("")
    lines.append(est["label"] + ".")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=64, help="the run's batch size (activation memory)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--model-preset", default="slim", help="ModelConfig preset under the scenario's [model]")
    parser.add_argument("--model-overrides", default="", help="JSON object of ModelConfig fields, as the run key")
    parser.add_argument("--measure-batch", type=int, default=4, help="batch used for the CPU measurements")
    parser.add_argument("--cpu-steps", type=int, default=3, help="timed CPU training steps (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    from skeletons.clikit import UserError

    if args.batch_size < 1 or args.local_epochs < 1 or args.measure_batch < 2:
        raise UserError("--batch-size and --local-epochs must be >= 1, --measure-batch >= 2")
    try:
        cost = measure(args.model_preset, args.model_overrides or None, args.measure_batch, args.cpu_steps)
    except ValueError as err:
        raise UserError(str(err)) from None
    est = estimate(cost, args.batch_size, args.local_epochs)
    if args.json:
        print(json.dumps({"measured": asdict(cost), "estimate": est}, indent=2))
    else:
        print(report(cost, est))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m simulations.cost``: the same as ``fedsar-sim cost``."""
    import sys

    from skeletons.clikit import UserError

    parser = argparse.ArgumentParser(prog="python -m simulations.cost", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
