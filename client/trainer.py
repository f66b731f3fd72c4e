"""The local trainer: one implementation for a federated site and for centralized runs.

The loss is FSAR's local objective::

    CE(student) + mean over grains m of [ lambda_mg * CE(mg_m) + lambda_kd * T^2 *
    KL(softmax(mg_m / T) || softmax(student / T)) ] + mu / 2 * ||w_shared - w_global||^2

where ``mg_m`` are the student's logits from the frozen teacher's features after block
``m`` (computed with the shared topology only). The training step is written so that
Opacus can wrap it: pass a private optimizer and data loader, the student's forward
passes are the only ones that build a graph, and the teacher runs under ``no_grad``.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client.augment import Augmentation, augment, pick_views
from models.roles import parameter_kind
from skeletons.devices import device_name

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
Progress = Callable[[dict[str, Any]], None]
Arrays = tuple[Any, Any]


@dataclass
class TrainConfig:
    """Everything a local training run needs; defaults are a sound centralized recipe.

    ``warmup`` counts epochs (fractions allowed) of linear learning-rate warm-up.
    Augmentations are strengths, zero is off (see :class:`client.augment.Augmentation`).
    ``grains`` lists the blocks after which the teacher's features enter the student
    (empty: no distillation). ``mu`` weighs the proximal term towards the global shared
    weights. ``mixed_precision`` applies on CUDA only.
    ``augment_multiplicity = K > 1`` feeds every sample K times per step, each copy
    augmented on its own; under DP-SGD each sample's K per-copy gradients are averaged
    before clipping, so the copies cost no privacy and the averaged gradient varies less
    (augmentation multiplicity). Without DP it is a K times larger batch of copies.
    ``augment_pool = P > 0`` lets a site whose every block is frozen draw each copy from
    P augmented views per sequence that :mod:`client.frozen_trunk` computes once, instead
    of transforming afresh at every step (the trainer then sees rows ``[N, P, D]``).
    ``swa_epochs > 0`` turns on stochastic weight averaging: the schedule anneals to
    ``swa_lr_factor`` times the base rate, holds it for the last ``swa_epochs`` epochs
    and the model ends as the average of the weights after each of them (an ensemble of
    nearby solutions in one model, at no cost in speed).
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    warmup: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    temporal_crop: float = 0.0
    rotate_axes: str = "xyz"
    augment_multiplicity: int = 1
    augment_pool: int = 0
    label_smoothing: float = 0.0
    grains: list[int] = field(default_factory=list)
    lambda_mg: float = 1.0
    lambda_kd: float = 1.0
    temperature: float = 2.0
    mu: float = 0.0
    grad_clip: float = 0.0
    swa_epochs: int = 0
    swa_lr_factor: float = 0.2
    device: str = "auto"
    mixed_precision: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer {self.optimizer!r} unknown; use {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule {self.schedule!r} unknown; use {SCHEDULES}")
        if self.warmup < 0 or self.mu < 0 or self.temperature <= 0:
            raise ValueError("TrainConfig.warmup and mu must be >= 0, temperature > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.swa_epochs < self.epochs:
            raise ValueError(
                f"TrainConfig.swa_epochs must be in [0, epochs={self.epochs}), got {self.swa_epochs}"
            )
        if not 0 < self.swa_lr_factor <= 1:
            raise ValueError(f"TrainConfig.swa_lr_factor must be in (0, 1], got {self.swa_lr_factor}")
        self.grains = [int(g) for g in self.grains]
        augmentation = self.augmentation  # validates the strengths
        if self.augment_multiplicity > 1 and not augmentation.active:
            raise ValueError(
                f"TrainConfig.augment_multiplicity {self.augment_multiplicity} needs an augmentation "
                "(rotate, scale, shear or temporal_crop): without one every copy is the same"
            )
        if self.augment_multiplicity < 1:
            raise ValueError(f"TrainConfig.augment_multiplicity must be >= 1, got {self.augment_multiplicity}")
        if self.augment_pool < 0:
            raise ValueError(f"TrainConfig.augment_pool must be >= 0, got {self.augment_pool}")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(
            self.rotate, self.scale, self.shear, self.temporal_crop, self.rotate_axes
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- devices

def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda``/``cuda:N`` must exist."""
    if isinstance(spec, torch.device):
        return spec
    name = device_name(spec)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device


def autocast_context(device: torch.device, enabled: bool = True) -> Any:
    """bfloat16 (or float16) autocast on CUDA; a no-op elsewhere."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    return torch.autocast("cuda", dtype=_amp_dtype())


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler | None:
    """A GradScaler where float16 autocast needs one (bfloat16 does not)."""
    if device.type == "cuda" and enabled and _amp_dtype() == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


# ------------------------------------------------------------------------------ data

class ArrayBatches:
    """Mini-batches over in-memory arrays (sequences, or the feature rows of
    :mod:`client.frozen_trunk`, ``[N, D]`` or a pool of views ``[N, P, D]``);
    reshuffled on every pass when ``shuffle``."""

    def __init__(
        self, x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64) if not torch.is_tensor(y) else y)
        if not (self.x.dim() == 5 and self.x.shape[1] == 3 or self.x.dim() in (2, 3)):
            raise ValueError(f"x must be sequences [N, 3, T, V, M] or cached feature rows [N, D] or "
                             f"[N, views, D], got {list(self.x.shape)}")
        if self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(
                f"y must be [N] labels matching x's {len(self.x)} samples, got {list(self.y.shape)}"
            )
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last and len(self.x) > self.batch_size
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def num_examples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def as_batches(data: Any, batch_size: int, shuffle: bool, seed: int = 0,
               drop_last: bool = False) -> Iterable:
    """A loader as is, or ``(x, y)`` arrays wrapped in :class:`ArrayBatches`."""
    if isinstance(data, tuple) and len(data) == 2:
        return ArrayBatches(data[0], data[1], batch_size, shuffle, seed, drop_last)
    return data


def _num_examples(batches: Iterable, seen: int) -> int:
    if isinstance(batches, ArrayBatches):
        return batches.num_examples
    dataset = getattr(batches, "dataset", None)
    try:
        return len(dataset) if dataset is not None else seen
    except TypeError:
        return seen


# ------------------------------------------------------------------ optimizer, schedule

def unwrap(model: nn.Module) -> nn.Module:
    """The network inside wrappers (Opacus's GradSampleModule keeps it in ``_module``)."""
    while isinstance(getattr(model, "_module", None), nn.Module):
        model = model._module
    return model


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on norms, biases and topology scalars."""
    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        plain = p.dim() <= 1 or parameter_kind(name) in ("norm", "topology_scalar")
        (no_decay if plain else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
        )
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, total: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total`` steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** sum(progress >= m for m in (0.6, 0.85))  # step


def swa_lr_factor(step: int, total: int, warmup_steps: int, schedule: str,
                  swa_steps: int, floor: float) -> float:
    """:func:`lr_factor` annealed to ``floor`` over the first ``total - swa_steps`` steps,
    then ``floor`` while the weights are averaged."""
    main = max(1, total - swa_steps)
    if step >= main:
        return floor
    factor = lr_factor(step, main, warmup_steps, schedule)
    if warmup_steps > 0 and step < warmup_steps:
        return factor
    return floor + (1 - floor) * factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(round(config.warmup * steps_per_epoch))
    if config.swa_epochs:
        swa_steps = steps_per_epoch * config.swa_epochs
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: swa_lr_factor(s, total, warmup, config.schedule, swa_steps, config.swa_lr_factor),
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, config.schedule)
    )


# ----------------------------------------------------------------------------- loss

def _is_private(optimizer: torch.optim.Optimizer) -> bool:
    """Opacus's DP optimizers overwrite ``.grad`` with clipped, noised per-sample sums."""
    return hasattr(optimizer, "noise_multiplier") and hasattr(optimizer, "max_grad_norm")


def proximal_pairs(
    model: nn.Module, global_shared: Mapping[str, Any] | None, device: torch.device
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, global value) for every trainable parameter named in ``global_shared``."""
    if not global_shared:
        return []
    params = dict(unwrap(model).named_parameters())
    unknown = sorted(k for k in global_shared if k not in params)
    if unknown:
        raise ValueError(f"global weights name parameters the model lacks: {', '.join(unknown[:5])}")
    pairs = []
    for name, value in global_shared.items():
        p = params[name]
        ref = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
        if tuple(ref.shape) != tuple(p.shape):
            raise ValueError(f"global weight {name} has shape {tuple(ref.shape)}, model {tuple(p.shape)}")
        if p.requires_grad:
            pairs.append((p, ref.to(device=device, dtype=p.dtype)))
    return pairs


def proximal_term(pairs: Sequence[tuple[nn.Parameter, torch.Tensor]]) -> torch.Tensor:
    """``1/2 * ||w - w_global||^2`` over the given pairs."""
    return 0.5 * sum(((p - g) ** 2).sum() for p, g in pairs)


@torch.no_grad()
def proximal_pull(pairs: Sequence[tuple[nn.Parameter, torch.Tensor]], mu: float, lr: float) -> None:
    """The proximal gradient step ``w -= lr * mu * (w - w_global)``, applied after the
    optimizer step. Used with private optimizers, which would discard it from ``.grad``;
    it depends on no data, so it costs no privacy."""
    for p, g in pairs:
        p.sub_(lr * mu * (p - g))


def training_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    teacher: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss, student logits, loss parts) without the proximal term.

    Every term is a per-sample mean, as DP-SGD's per-sample clipping requires.
    """
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    parts = {"ce": float(loss.detach())}
    if teacher is not None and config.grains:
        student = unwrap(model)
        t = config.temperature
        log_q = F.log_softmax(logits.float() / t, dim=1)
        mg_total = 0.0
        statistics = student.input_statistics(x)  # the head reads them in every grain's logits too
        for grain in config.grains:
            with torch.no_grad():
                feats = teacher.block_features(x, grain, shared_topology_only=True)
            mg = student.forward_from(feats, grain, statistics)
            ce_mg = F.cross_entropy(mg, y, label_smoothing=config.label_smoothing)
            p = F.softmax(mg.detach().float() / t, dim=1)
            kd = F.kl_div(log_q, p, reduction="batchmean") * (t * t)
            mg_total = mg_total + config.lambda_mg * ce_mg + config.lambda_kd * kd
        mg_loss = mg_total / len(config.grains)
        loss = loss + mg_loss
        parts["mkd"] = float(mg_loss.detach())
    return loss, logits, parts


# ---------------------------------------------------------------------------- train

def _prepare_teacher(teacher: nn.Module, device: torch.device) -> nn.Module:
    teacher = unwrap(teacher).to(device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_grains(model: nn.Module, grains: Sequence[int]) -> None:
    """Refuse distillation grains that are not blocks of ``model``, naming them."""
    n = unwrap(model).num_blocks
    bad = [g for g in grains if not 1 <= g <= n]
    if bad:
        raise ValueError(f"TrainConfig.grains {bad} outside the model's blocks 1..{n}")


def train(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    teacher: nn.Module | None = None,
    global_shared: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; return the last epoch's metrics.

    ``data`` is an iterable of ``(x, y)`` batches (a DataLoader, Opacus's DPDataLoader)
    or a tuple of arrays ``(x [N, 3, T, V, M], y [N])``. ``optimizer`` (e.g. Opacus's
    DPOptimizer over a GradSampleModule ``model``) and ``scheduler`` replace the ones
    built from ``config``. ``teacher`` is the frozen global model for multi-grain
    distillation; ``global_shared`` the global values of the shared parameters for the
    proximal term. ``progress`` receives a dict after every epoch.
    Returns ``loss``, ``accuracy`` (training batches, augmented), ``num_examples``,
    ``seconds``, ``epochs``, ``steps`` and per-epoch ``history``.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device)
    model.train()
    batches = as_batches(data, config.batch_size, shuffle=True, seed=config.seed)
    if teacher is not None and config.grains:
        check_grains(model, config.grains)
        teacher = _prepare_teacher(teacher, device)
    optimizer = optimizer or make_optimizer(model, config)
    private = _is_private(optimizer)
    if scheduler is None:
        try:
            steps_per_epoch = len(batches)  # type: ignore[arg-type]
        except TypeError:
            steps_per_epoch = 1
        scheduler = make_scheduler(optimizer, config, max(1, steps_per_epoch))
    pairs = proximal_pairs(model, global_shared, device) if config.mu > 0 else []
    scaler = make_scaler(device, config.mixed_precision)
    gen = torch.Generator().manual_seed(config.seed + 1)
    aug = config.augmentation
    copies = config.augment_multiplicity
    history: list[dict[str, Any]] = []
    averaged = None
    start = time.perf_counter()
    steps = 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in batches:
            if len(y) == 0:
                continue
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            count = len(y)
            if copies > 1:
                x, y = x.repeat_interleave(copies, 0), y.repeat_interleave(copies, 0)
            # a pool of cached views [B, P, D]: each copy takes one of its sample's views
            x = pick_views(x, gen) if x.dim() == 3 else augment(x, aug, gen)
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, config.mixed_precision):
                loss, logits, _ = training_loss(model, x, y, config, teacher)
                if pairs and not private:
                    loss = loss + config.mu * proximal_term(pairs)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch}; lower TrainConfig.lr"
                )
            _backward_and_step(loss, model, optimizer, scaler, config.grad_clip,
                               copies=copies if private else 1)
            if pairs and private and not getattr(optimizer, "_is_last_step_skipped", False):
                # physical batches that only accumulate (Opacus's BatchMemoryManager) skip it
                proximal_pull(pairs, config.mu, optimizer.param_groups[0]["lr"])
            scheduler.step()
            steps += 1
            loss_sum += float(loss.detach()) * count
            correct += float((logits.detach().argmax(1) == y).sum()) / copies
            seen += count
        record = {
            "epoch": epoch,
            "epochs": config.epochs,
            "loss": loss_sum / max(1, seen),
            "accuracy": correct / max(1, seen),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "samples": seen,
        }
        if config.swa_epochs and epoch > config.epochs - config.swa_epochs:
            averaged = _update_average(averaged, model)
            record["swa_models"] = averaged.n_averaged.item()
        history.append(record)
        if progress is not None:
            progress(dict(record))
    if averaged is not None:
        unwrap(model).load_state_dict(averaged.module.state_dict())
    last = history[-1]
    return {
        "loss": last["loss"],
        "accuracy": last["accuracy"],
        "num_examples": _num_examples(batches, last["samples"]),
        "seconds": time.perf_counter() - start,
        "epochs": config.epochs,
        "steps": steps,
        "history": history,
    }


def _update_average(
    averaged: torch.optim.swa_utils.AveragedModel | None, model: nn.Module
) -> torch.optim.swa_utils.AveragedModel:
    """Add the model's current weights to the running equal-weight average. The network
    has no BatchNorm, so the averaged weights need no statistics recomputed."""
    if averaged is None:
        averaged = torch.optim.swa_utils.AveragedModel(unwrap(model), use_buffers=True)
    averaged.update_parameters(unwrap(model))
    return averaged


def average_copies(model: nn.Module, copies: int) -> None:
    """Replace the per-sample gradients Opacus stored for ``N * copies`` rows (each
    sample's copies adjacent) by their mean over each sample's copies: DP-SGD then clips
    one gradient per sample, so extra augmented copies cost no privacy."""
    for p in unwrap(model).parameters():
        grads = getattr(p, "grad_sample", None)
        if grads is None:
            continue
        if isinstance(grads, list):
            grads = torch.cat(grads, dim=0)
        rows = grads.shape[0]
        if rows % copies:
            raise RuntimeError(f"{rows} per-sample gradients are not {copies} copies of whole samples")
        p.grad_sample = grads.reshape(rows // copies, copies, *grads.shape[1:]).mean(dim=1)


def _backward_and_step(
    loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None, grad_clip: float, copies: int = 1,
) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if copies > 1:
        average_copies(model, copies)
    if scaler is not None:
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return
    if grad_clip > 0 and not _is_private(optimizer):
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


# ------------------------------------------------------------------------- evaluate

@torch.no_grad()
def predict(model: nn.Module, data: Any, device: str | torch.device = "auto",
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits ``[N, classes]`` float32, labels ``[N]``) in data order."""
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in as_batches(data, batch_size, shuffle=False):
            with autocast_context(dev):
                out = model(x.to(dev))
            logits.append(out.float().cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was_training)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, data: Any, device: str | torch.device = "auto",
             batch_size: int = 64) -> dict[str, float]:
    """``loss`` (cross-entropy), ``accuracy`` (top-1) and ``num_examples``."""
    logits, labels = predict(model, data, device, batch_size)
    n = len(labels)
    if n == 0:
        return {"loss": 0.0, "accuracy": 0.0, "num_examples": 0}
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long())
    acc = float((logits.argmax(1) == labels).mean())
    return {"loss": float(loss), "accuracy": acc, "num_examples": n}


def evaluate_ensemble(models: Sequence[nn.Module], data: Any, device: str | torch.device = "auto",
                      batch_size: int = 64) -> dict[str, float]:
    """:func:`evaluate` for models that vote by their mean softmax (one model: the same
    accuracy, and its cross-entropy as the loss). Members trained from different seeds
    err on different samples, which is what an ensemble gains on."""
    if not models:
        raise ValueError("evaluate_ensemble needs at least one model")
    probs, labels = None, np.zeros(0, np.int64)
    for model in models:
        logits, labels = predict(model, data, device, batch_size)
        p = torch.from_numpy(logits).softmax(dim=1)
        probs = p if probs is None else probs + p
    n = len(labels)
    if n == 0:
        return {"loss": 0.0, "accuracy": 0.0, "num_examples": 0}
    mean = probs / len(models)
    loss = F.nll_loss(mean.clamp_min(1e-12).log(), torch.from_numpy(labels).long())
    acc = float((mean.argmax(1).numpy() == labels).mean())
    return {"loss": float(loss), "accuracy": acc, "num_examples": n}
