"""Sample-level DP-SGD on a site with Opacus, under a budget that holds for the whole run.

Each site privatizes its own training: Poisson-sampled batches, per-sample gradients
clipped to ``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm``
added to every step (``PrivacyEngine.make_private``), physical batches bounded by
``BatchMemoryManager``. Every trainable parameter of the student is privatized, the
personal ones too (they are trained on the same private data); the frozen MKD teacher
runs without gradients and is not wrapped.

The budget is a target ``(epsilon, delta)`` for everything the site ever trains. Knowing
the number of rounds, local epochs and the sample rate up front, the noise multiplier
comes from Opacus's ``get_noise_multiplier`` (or from the budget left in the ledger when
the site has trained before), or is set directly. Before each round the site checks
what the round would add (:mod:`privacy.ledger`); a round that would go past the target
is declined, with the reason in the log and in the reply.

Noise and sampling draw from generators seeded from ``os.urandom``: the trainer seeds
torch's global generator from the run seed, which the coordinator knows, so noise drawn
from it could be subtracted again.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from privacy.ledger import (
    MECHANISMS,
    ContextStore,
    FileStore,
    LedgerStore,
    MirroredStore,
    PrivacyLedger,
    epsilon_of,
    compose,
    total_steps,
    transaction,
)
from privacy.run_keys import DP_RUN_KEYS as RUN_KEYS
from skeletons.clikit import counted

log = logging.getLogger(__name__)

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
MAX_NOISE = 1e6
# The reply keys every site sends, DP or not, so replies stay uniform across sites.
PRIVACY_METRICS = ("privacy-epsilon", "privacy-dp", "privacy-declined")
_OFF = {"", "inf", "+inf", "infinity", "none", "off"}


class BudgetExhausted(Exception):
    """The site declines a round: training it would exceed the site's privacy budget."""

    def __init__(self, reason: str, epsilon: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.epsilon = epsilon

    @property
    def metrics(self) -> dict[str, float]:
        return {"privacy-epsilon": float(self.epsilon), "privacy-dp": 1.0, "privacy-declined": 1.0}


@dataclass(frozen=True)
class DPSettings:
    """A site's DP-SGD settings (see :data:`RUN_KEYS` for their config names).

    ``epsilon`` is the target for everything the site trains (None: no target, only
    possible together with a fixed ``noise_multiplier``); ``max_noise_multiplier`` makes
    the site decline a round whose planned noise would be larger (None: no bound), so that a
    site with little budget left declines instead of sending an update that is mostly
    noise; ``max_physical_batch`` bounds the batches actually run through the model (0:
    the logical batch size).
    """

    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    max_noise_multiplier: float | None = None
    accountant: str = "rdp"
    grad_sample_mode: str = "hooks"
    max_physical_batch: int = 0
    secure_mode: bool = False

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"dp-epsilon must be a positive number or 'inf', got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"dp-max-grad-norm must be positive, got {self.max_grad_norm}")
        if self.noise_multiplier is not None and not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"dp-noise-multiplier must be positive, got {self.noise_multiplier}")
        cap = self.max_noise_multiplier
        if cap is not None and not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"dp-max-noise-multiplier must be positive, got {cap}")
        if cap is not None and self.noise_multiplier is not None and self.noise_multiplier > cap:
            raise ValueError(f"dp-noise-multiplier {self.noise_multiplier:g} is above "
                             f"dp-max-noise-multiplier {cap:g}")
        if self.accountant not in MECHANISMS:
            raise ValueError(f"dp-accountant {self.accountant!r} unknown; choose from {', '.join(MECHANISMS)}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"dp-grad-sample-mode {self.grad_sample_mode!r} unsupported by the site trainer; choose from "
                f"{', '.join(GRAD_SAMPLE_MODES)} (ghost clipping needs a per-sample loss; see python -m privacy.dp_bench)"
            )
        if self.max_physical_batch < 0:
            raise ValueError(f"dp-max-physical-batch must be >= 0, got {self.max_physical_batch}")

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    @classmethod
    def resolve(cls, *sources: tuple[Mapping[str, Any] | None, str]) -> "DPSettings":
        """Settings from ``(mapping, where)`` sources; later sources override earlier ones
        key by key (the site's own config comes last, so it wins over the run config)."""
        values: dict[str, Any] = {}
        for mapping, where in sources:
            values.update(parse_dp_keys(mapping or {}, where))
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{err} ({', '.join(w for m, w in sources if m)})") from None


def parse_dp_keys(mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The DP fields named in ``mapping`` (hyphenated keys), converted; errors name the key."""
    kinds = {"epsilon": "number (or inf)", "noise_multiplier": "number (or off)",
             "max_noise_multiplier": "number (or inf)", "max_physical_batch": "whole number"}
    out: dict[str, Any] = {}
    for key, name in RUN_KEYS.items():
        if key not in mapping:
            continue
        value = mapping[key]
        try:
            if name in ("epsilon", "noise_multiplier", "max_noise_multiplier"):
                text = str(value).strip().lower()
                out[name] = None if text in _OFF or (name == "epsilon" and math.isinf(float(text))) else float(text)
            elif name in ("delta", "max_grad_norm"):
                out[name] = float(value)
            elif name == "max_physical_batch":
                out[name] = int(value)
            elif name == "secure_mode":
                out[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            else:
                out[name] = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} = {value!r} is not a valid {kinds.get(name, 'number')}") from None
    return out


def site_toml_keys(site_config: Any) -> dict[str, Any]:
    """The DP keys a ``site.toml`` ``[privacy]`` table sets (see ``client.site_config``)."""
    priv = site_config.privacy
    pairs = {"dp-epsilon": priv.epsilon, "dp-delta": priv.delta, "dp-max-grad-norm": priv.max_grad_norm,
             "dp-noise-multiplier": priv.noise_multiplier, "dp-max-noise-multiplier": priv.max_noise_multiplier}
    raw = site_config.raw.get("privacy", {}) if isinstance(site_config.raw, dict) else {}
    if "delta" not in raw:
        pairs.pop("dp-delta")
    return {k: v for k, v in pairs.items() if v is not None}


# -------------------------------------------------------------------------- planning

def check_personal_epochs(personal_epochs: int, dp_enabled: bool) -> None:
    """``personal-epochs`` must be >= 0 and cannot be combined with DP-SGD: the personal
    phase would train on private data outside the privacy ledger. The coordinator checks
    the run config, each site its own settings as well."""
    if personal_epochs < 0:
        raise ValueError(f"'personal-epochs' must be >= 0, got {personal_epochs}")
    if personal_epochs and dp_enabled:
        raise ValueError("'personal-epochs' > 0 is not available with DP-SGD on the sites "
                         "(dp-epsilon / dp-noise-multiplier): set personal-epochs = 0")


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def sample_rate_for(num_examples: int, batch_size: int) -> float:
    """Poisson sample rate as Opacus derives it: one over the number of batches."""
    return 1.0 / batches_per_epoch(num_examples, batch_size)


def noise_for_budget(history: list, mechanism: str, target_epsilon: float, delta: float,
                     sample_rate: float, steps: int, tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (within ``tolerance`` in epsilon) whose ``steps`` more
    steps keep everything in ``history`` plus them under ``target_epsilon``.

    With an empty history this is Opacus's ``get_noise_multiplier``.
    """
    with warnings.catch_warnings():  # the search visits small noise levels where RDP's
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # best order is the last
        return _noise_for_budget(history, mechanism, target_epsilon, delta, sample_rate, steps, tolerance)


def _noise_for_budget(history: list, mechanism: str, target_epsilon: float, delta: float,
                      sample_rate: float, steps: int, tolerance: float) -> float:
    if not history:
        from opacus.accountants.utils import get_noise_multiplier

        try:
            return float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                accountant=mechanism, epsilon_tolerance=tolerance,
            ))
        except ValueError:
            raise BudgetExhausted(f"epsilon {target_epsilon} at delta {delta} is too small for {steps} steps "
                                  f"at sample rate {sample_rate:.4g}") from None
    spent = epsilon_of(history, mechanism, delta)
    if spent >= target_epsilon:
        raise BudgetExhausted(f"budget spent: epsilon {spent:.4f} of {target_epsilon}", spent)

    def eps(z: float) -> float:
        return epsilon_of(compose(history, z, sample_rate, steps), mechanism, delta)

    low, high = 0.0, 10.0
    while eps(high) >= target_epsilon:
        high *= 2
        if high > MAX_NOISE:
            raise BudgetExhausted(f"budget left ({target_epsilon - spent:.4f}) is too small for {steps} more steps", spent)
    while target_epsilon - eps(high) > tolerance:
        mid = (low + high) / 2
        if eps(mid) < target_epsilon:
            high = mid
        else:
            low = mid
    return high


def noise_for_share(target_epsilon: float, delta: float, mechanism: str, share: float, releases: int,
                    what: str) -> float:
    """Noise multiplier of ``releases`` Gaussian releases of a whole split (sample rate 1)
    that together spend at most ``share`` of ``target_epsilon`` on their own; a ValueError
    naming ``what`` when the accountant cannot show an epsilon that small."""
    cap = share * float(target_epsilon)
    try:
        return noise_for_budget([], mechanism, cap, delta, 1.0, releases)
    except BudgetExhausted:  # the accountant's orders bound how small an epsilon it can show
        raise ValueError(f"dp-epsilon {target_epsilon:g}: no noise keeps the {what} release within "
                         f"{share:g} of it ({cap:g}); ask for a larger epsilon") from None


def plan_noise(ledger: PrivacyLedger, settings: DPSettings, *, run: str, server_round: int,
               planned_rounds: int, sample_rate: float, steps_per_round: int) -> float:
    """This round's noise multiplier: fixed, the run's stored plan, or a new plan that
    spreads the budget left over the rounds left in the run."""
    if settings.noise_multiplier is not None:
        return settings.noise_multiplier
    assert settings.epsilon is not None
    plan = ledger.plan or {}
    same = (plan.get("run") == run and plan.get("sample_rate") == sample_rate
            and plan.get("steps_per_round") == steps_per_round and plan.get("target_epsilon") == settings.epsilon
            and plan.get("delta") == settings.delta)
    if same:
        return _within_cap(float(plan["noise_multiplier"]), settings, ledger, int(plan.get("rounds_left", 1)))
    if planned_rounds < 1:
        raise ValueError("dp-epsilon needs the planned number of rounds: the train config lacks 'num-server-rounds'")
    rounds_left = max(1, planned_rounds - max(1, server_round) + 1)
    z = noise_for_budget(ledger.history, settings.accountant, settings.epsilon, settings.delta,
                         sample_rate, rounds_left * steps_per_round)
    _within_cap(z, settings, ledger, rounds_left)
    ledger.plan = {
        "run": run, "from_round": int(server_round), "rounds": int(planned_rounds), "rounds_left": rounds_left,
        "steps_per_round": int(steps_per_round), "sample_rate": sample_rate, "noise_multiplier": z,
        "target_epsilon": settings.epsilon, "delta": settings.delta, "max_grad_norm": settings.max_grad_norm,
        "epsilon_at_end": epsilon_of(compose(ledger.history, z, sample_rate, rounds_left * steps_per_round),
                                     settings.accountant, settings.delta),
    }
    log.info("privacy plan for run %s: noise multiplier %.4f for %d rounds of %d steps (q=%.4g) -> epsilon %.3f",
             run, z, rounds_left, steps_per_round, sample_rate, ledger.plan["epsilon_at_end"])
    return z


def _within_cap(z: float, settings: DPSettings, ledger: PrivacyLedger, rounds: int) -> float:
    """``z``, or :class:`BudgetExhausted` when it is above ``max_noise_multiplier``."""
    cap = settings.max_noise_multiplier
    if cap is None or z <= cap:
        return z
    spent = ledger.epsilon()
    raise BudgetExhausted(
        f"the budget left (epsilon {settings.epsilon - spent:.4g} of {settings.epsilon:g}) over "
        f"{counted(rounds, 'round')} needs noise multiplier {z:.4g}, above dp-max-noise-multiplier "
        f"{cap:g}: the update would be mostly noise", spent)


# -------------------------------------------------------------------------- training

def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator the coordinator cannot reproduce (seeded from the OS's entropy)."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def check_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot privatize (e.g. BatchNorm), naming the layers."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError("the model cannot be trained with DP-SGD: " + "; ".join(str(e) for e in errors[:5]))


def _recipe_device(recipe: Any) -> torch.device:
    """The device ``recipe`` trains on, chosen as the site trainer chooses it."""
    from client.trainer import resolve_device

    return resolve_device(str(getattr(recipe, "device", "auto")))


def train_private(
    model: nn.Module,
    data: tuple[Any, Any],
    recipe: Any,
    settings: DPSettings,
    store: LedgerStore,
    *,
    site: str,
    run: str,
    server_round: int,
    planned_rounds: int,
    train_fn: Callable[..., dict[str, Any]],
    optimizer_fn: Callable[[nn.Module, Any], torch.optim.Optimizer],
    teacher: nn.Module | None = None,
    global_shared: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """One round of DP-SGD on ``data = (x [N,3,T,V,M], y [N])``; returns the trainer's
    metrics and the privacy metrics of the reply. Raises :class:`BudgetExhausted` (after
    writing the decline into the ledger) when the round would exceed the budget.

    ``recipe`` is a ``client.trainer.TrainConfig``; ``train_fn`` and ``optimizer_fn`` are
    the site trainer's ``train`` and ``make_optimizer``.
    """
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.as_tensor(np.asarray(data[0], dtype=np.float32))
    y = torch.as_tensor(np.asarray(data[1], dtype=np.int64))
    batch_size = int(recipe.batch_size)
    batches = batches_per_epoch(len(y), batch_size)
    q = 1.0 / batches
    steps = int(recipe.epochs) * batches
    check_model(model)

    stop: BudgetExhausted | None = None
    with transaction(store, site=site, mechanism=settings.accountant, delta=settings.delta) as ledger:
        ledger.delta = settings.delta
        ledger.target_epsilon = settings.epsilon
        try:
            z = plan_noise(ledger, settings, run=run, server_round=server_round, planned_rounds=planned_rounds,
                           sample_rate=q, steps_per_round=steps)
            after = ledger.epsilon_after(z, q, steps)
            if settings.epsilon is not None and after > settings.epsilon * (1 + 1e-9):
                raise BudgetExhausted(
                    f"round {server_round} would raise epsilon from {ledger.epsilon():.4f} to {after:.4f}, "
                    f"over the budget {settings.epsilon} (delta {settings.delta})")
        except BudgetExhausted as err:
            err.epsilon = ledger.epsilon()
            ledger.decline(run, server_round, err.reason)
            stop = err
        else:
            ledger.reserve(run, server_round, z, q, steps, settings.max_grad_norm)
    if stop is not None:
        log.warning("site %s declines round %d: %s", site, server_round, stop.reason)
        raise stop

    device = _recipe_device(recipe)
    with warnings.catch_warnings():  # noise and sampling use secret generators (see module docs)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=settings.accountant, secure_mode=settings.secure_mode)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, generator=secret_generator())
    model.to(device)  # before the optimizer, so that state it starts from (keep-optimizer-state) lands beside the parameters
    optimizer = optimizer_fn(model, recipe)
    private_model, dp_optimizer, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=z,
        max_grad_norm=settings.max_grad_norm, poisson_sampling=True, grad_sample_mode=settings.grad_sample_mode,
        noise_generator=None if settings.secure_mode else secret_generator(device),
    )
    if abs(1.0 / len(dp_loader) - q) > 1e-12:  # the ledger must account what Opacus samples
        raise RuntimeError(f"Opacus samples at rate {1 / len(dp_loader)}, the ledger reserved {q}")
    recipe_dp = replace(recipe, mixed_precision=False, grad_clip=0.0)
    physical = settings.max_physical_batch or batch_size
    try:
        with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=physical,
                                optimizer=dp_optimizer) as memory_safe, warnings.catch_warnings():
            # Opacus's hooks on layers whose inputs need no gradient (the data, the teacher's features).
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            metrics = train_fn(private_model, memory_safe, recipe_dp, teacher=teacher,
                               global_shared=global_shared, optimizer=dp_optimizer)
    finally:
        _release(private_model)
    taken = total_steps(engine.accountant.history)
    with transaction(store, site=site, mechanism=settings.accountant, delta=settings.delta) as ledger:
        entry = ledger.settle(run, server_round, taken)
        epsilon = ledger.epsilon()
    log.info("site %s round %d: %d DP-SGD steps (z=%.4f, q=%.4g, C=%g), epsilon %.4f at delta %g",
             site, server_round, taken, z, q, settings.max_grad_norm, epsilon, settings.delta)
    metrics = dict(metrics, privacy={"noise_multiplier": z, "sample_rate": q, "steps": entry["steps"]})
    return metrics, {"privacy-epsilon": float(epsilon), "privacy-dp": 1.0, "privacy-declined": 0.0}


def _release(private_model: nn.Module) -> None:
    """Take Opacus's hooks and per-sample buffers off the model the site keeps using."""
    for closer in ("_close", "remove_hooks"):
        fn = getattr(private_model, closer, None)
        if callable(fn):
            try:
                fn()
                return
            except Exception:  # noqa: BLE001 - best effort; the wrapper is discarded anyway
                continue


def plain_metrics() -> dict[str, float]:
    """Privacy metrics of a site training without DP (no guarantee: ``privacy-dp`` 0)."""
    return {"privacy-epsilon": 0.0, "privacy-dp": 0.0, "privacy-declined": 0.0}


# ---------------------------------------------------------------- the site's entry point

def site_privacy(node_config: Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """The site's own DP keys and ledger path: from its ``site.toml`` (node config
    ``site-config``) or from node-config keys (``dp-epsilon``, ..., ``privacy-ledger``)."""
    keys: dict[str, Any] = {k: node_config[k] for k in RUN_KEYS if k in node_config}
    ledger: Path | None = Path(str(node_config["privacy-ledger"])) if "privacy-ledger" in node_config else None
    if "site-config" in node_config:
        from client.site_config import load_site_config

        site = load_site_config(str(node_config["site-config"]))
        keys = {**site_toml_keys(site), **keys}
        ledger = ledger or site.ledger_path
    return keys, ledger


def ledger_store(context: Any, path: Path | None) -> LedgerStore:
    """The disk file when the site has one (mirrored into ``Context.state``), else the state."""
    in_state = ContextStore(context)
    return MirroredStore(FileStore(path), in_state) if path is not None else in_state


def site_dp_settings(context: Any, config: Mapping[str, Any]) -> tuple[DPSettings, Path | None]:
    """The site's DP settings for this round (run-config ``dp-*`` keys unless its own
    config sets the same key) and its ledger path."""
    own, ledger_path = site_privacy(context.node_config)
    return DPSettings.resolve((config, "run config"), (own, "site config")), ledger_path


def dp_requested(context: Any, config: Mapping[str, Any]) -> bool:
    """Whether this site trains with DP-SGD this round (its own settings or the run config's)."""
    return site_dp_settings(context, config)[0].enabled


def train_site(
    context: Any,
    config: Mapping[str, Any],
    site: str,
    model: nn.Module,
    data: tuple[Any, Any],
    recipe: Any,
    *,
    train_fn: Callable[..., dict[str, Any]],
    optimizer_fn: Callable[[nn.Module, Any], torch.optim.Optimizer],
    teacher: nn.Module | None = None,
    global_shared: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """A site's local training for one round, private when its settings ask for it.

    Run-config keys (``dp-*`` in the train config) apply unless the site's own config
    sets the same key. Returns the trainer's metrics and the reply's privacy metrics;
    raises :class:`BudgetExhausted` when the site declines the round.
    """
    settings, ledger_path = site_dp_settings(context, config)
    if not settings.enabled:
        model.to(_recipe_device(recipe))  # before its optimizer: see train_private
        metrics = train_fn(model, data, recipe, teacher=teacher, global_shared=global_shared,
                           optimizer=optimizer_fn(model, recipe))
        return metrics, plain_metrics()
    return train_private(
        model, data, recipe, settings, ledger_store(context, ledger_path), site=site,
        run=str(getattr(context, "run_id", "")), server_round=int(config.get("server-round", 0)),
        planned_rounds=int(config.get("num-server-rounds", 0)), train_fn=train_fn, optimizer_fn=optimizer_fn,
        teacher=teacher, global_shared=global_shared,
    )


def fit_statistics_scale(
    context: Any, config: Mapping[str, Any], site: str, model: nn.Module, x_train: Any,
) -> str | None:
    """Fit the statistics branch's standardization (:mod:`models.statistics`) on the
    site's training split, once: the site keeps it as a personal buffer afterwards.

    Without DP the split's exact mean and spread; under the site's DP settings a Gaussian
    release (:mod:`privacy.feature_scale`) written into the ledger before any DP-SGD step,
    so the budget covers it. Returns how it was fitted (None: nothing to fit). Raises
    :class:`BudgetExhausted` (after writing the decline) when the release would exceed
    the budget.
    """
    branch = getattr(model, "statistics", None)
    if branch is None or branch.fitted:
        return None
    from privacy.feature_scale import (SCALE_CLIP, SCALE_RELEASES, dp_scale, exact_scale, public_scale,
                                       release_noise, training_statistics)

    features = training_statistics(x_train, model.layout)
    settings, ledger_path = site_dp_settings(context, config)
    if not settings.enabled:
        branch.set_scale(*exact_scale(features))
        return "exact"
    noise = release_noise(settings.epsilon, settings.delta, settings.accountant)
    public = public_scale(model.layout.name, int(np.shape(x_train)[2]))
    entry = record_release(context, config, site, settings, ledger_path, "statistics scale", noise,
                           SCALE_RELEASES, SCALE_CLIP)
    scale, _ = dp_scale(features, public, SCALE_CLIP, noise, secret_generator())
    branch.set_scale(*scale)
    log.info("site %s released its statistics scale (noise %.3g, clip %g): epsilon %.4f",
             site, noise, SCALE_CLIP, entry["epsilon"])
    return "dp"


def record_release(context: Any, config: Mapping[str, Any], site: str, settings: DPSettings,
                   ledger_path: Path | None, what: str, noise: float, count: int, clip: float) -> dict[str, Any]:
    """Write ``count`` Gaussian releases of the site's whole training split (``what``, e.g.
    the statistics scale) into its ledger before the data are touched, so that the budget
    covers them; returns the ledger's entry. When they would pass the budget, writes the
    decline instead and raises :class:`BudgetExhausted`."""
    run, server_round = str(getattr(context, "run_id", "")), int(config.get("server-round", 0))
    stop: BudgetExhausted | None = None
    with transaction(ledger_store(context, ledger_path), site=site, mechanism=settings.accountant,
                     delta=settings.delta) as ledger:
        ledger.delta = settings.delta  # as a DP-SGD round sets it
        after = ledger.epsilon_after(noise, 1.0, count)
        if settings.epsilon is not None and after > settings.epsilon * (1 + 1e-9):
            reason = (f"releasing the {what} would raise epsilon from {ledger.epsilon():.4f} to "
                      f"{after:.4f}, over the budget {settings.epsilon} (delta {settings.delta})")
            ledger.decline(run, server_round, reason)
            stop = BudgetExhausted(reason, ledger.epsilon())
        else:
            entry = ledger.release(run, server_round, what, noise, count, clip)
    if stop is not None:
        log.warning("site %s declines round %d: %s", site, server_round, stop.reason)
        raise stop
    return entry


def run_config_keys(extra: Mapping[str, Any], num_rounds: int) -> dict[str, Any]:
    """What the coordinator forwards to the sites' train config: the ``dp-*`` keys of the
    run config and the planned number of rounds (sites size their noise with it)."""
    parse_dp_keys(extra, "run config")  # bad values fail at the coordinator, naming the key
    out: dict[str, Any] = {k: (v if isinstance(v, (bool, int, float)) else str(v)) for k, v in extra.items() if k in RUN_KEYS}
    out["num-server-rounds"] = int(num_rounds)
    return out
