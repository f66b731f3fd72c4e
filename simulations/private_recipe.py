"""``--private-recipe``: the settings that keep the most accuracy under DP-SGD, as one option.

Under sample-level DP-SGD a site's noise grows with the parameters it trains and its
signal with the sequences it holds, and the sites here hold a few hundred. The recipe
(measured in BENCHMARKS.md, "Utility under privacy") starts every site from a backbone
trained on the built-in synthetic data, freezes every graph block, and trains only the
head, which reads the sequence statistics beside the pooled feature (the statistics
branch without its projection: on frozen blocks the head is linear in both either way,
and fewer trained parameters share the clipping bound and the noise), with the optimizer
state kept across rounds, one head per label group, and every head started from the
site's class means (one more Gaussian release, :mod:`privacy.class_means`); a site that
augments its sequences trains on four augmented copies of each, averaged before DP-SGD
clips, drawn from 32 views per sequence computed once. Every key is
an ordinary run-config key: options given on the command line or with ``--set``
override the recipe's, and a deployed coordinator gets the same run by putting the keys
in its run config beside the same ``scenario`` (whose ``[defaults]`` it applies as
``fedsar-sim`` does: optimizer, rounds, grains).

The synthetic warm start is built once (the default synthetic job, seed 0, one thread per
site whatever the caller's ``OMP_NUM_THREADS``) and cached in
``$FEDSAR_CACHE_DIR`` (else ``$XDG_CACHE_HOME/fedsar``, else ``~/.cache/fedsar``; the
folder of :func:`skeletons.cache.cache_dir`), under a
name that changes with the synthetic scenario's model and layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skeletons.clikit import UserError
from skeletons.toml_text import toml_value

# Run-config keys of the recipe besides the warm start and the frozen depth (which
# depends on the model: every block). The run's own model-overrides are laid over these.
RECIPE_KEYS: dict[str, Any] = {
    "model-overrides": {"statistics": True, "statistics_projection": False},
    "batch-size": 128,
    "learning-rate": 0.005,
    "local-epochs": 5,
    "group-heads": True,
    "keep-optimizer-state": True,
    "dp-accountant": "prv",
    "head-start": "class-means",
    # for the sites that augment (others train on one copy): four copies of each sequence
    # averaged before clipping, drawn from 32 views computed once on the frozen blocks
    "augment-multiplicity": 4,
    "augment-pool": 32,
}


def apply_private_recipe(config: dict[str, Any], explicit: set[str], device: str = "auto") -> dict[str, Any]:
    """``config`` (scenario defaults with the run's own keys on top) with the recipe's
    keys filled in wherever the run did not give its own (``explicit``); the run's
    ``model-overrides`` are laid over the recipe's key by key. Builds the synthetic
    warm start first when the run names no ``initial-model``."""
    from server.federation import model_config_for
    from server.settings import RunSettings
    from skeletons.scenario import resolve_scenario

    out = dict(config)
    for key, value in RECIPE_KEYS.items():
        if key not in explicit and key != "model-overrides":
            out[key] = value
    # a JSON text, as a run config (Flower's, a TOML file) carries it
    out["model-overrides"] = json.dumps({**RECIPE_KEYS["model-overrides"], **_as_object(config.get("model-overrides"))})
    if "frozen-blocks" not in explicit:
        scenario = resolve_scenario(str(out["scenario"]), out.get("paths-file") or None)
        preset = str(out.get("model-preset") or RunSettings.model_preset)
        try:
            out["frozen-blocks"] = len(model_config_for(scenario, preset, out["model-overrides"])["channels"])
        except ValueError as err:
            raise UserError(str(err)) from None
    if "initial-model" not in explicit:
        out["initial-model"] = str(synthetic_warm_start(device))
    return out


def _as_object(overrides: Any) -> dict[str, Any]:
    """A run's ``model-overrides`` (a dict, a JSON text or nothing) as a dict."""
    if not overrides:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise UserError(f"run config 'model-overrides' {overrides!r} is not JSON: {err}") from None
    if not isinstance(overrides, dict):
        raise UserError(f"run config 'model-overrides' must be a JSON object, got {overrides!r}")
    return dict(overrides)


def synthetic_model_tag() -> str:
    """A short digest of the synthetic scenario's model and layout: a cached warm start of
    another model is not reused."""
    from server.federation import model_config_for
    from server.settings import RunSettings
    from skeletons.scenario import load_scenario

    scenario = load_scenario("synthetic")
    preset = str(scenario.defaults.get("model-preset") or RunSettings.model_preset)
    spec = {"layout": scenario.layout, "frames": scenario.num_frames, "persons": scenario.num_persons,
            "model": model_config_for(scenario, preset)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def synthetic_warm_start(device: str = "auto", rounds: int | None = None) -> Path:
    """The cached synthetic warm start's ``global.npz``, built first if missing.

    Built by a child process running the default synthetic job into a temporary folder
    that is renamed into place only when the job succeeded, so that an interrupted build
    leaves nothing half-written to be reused. ``rounds`` shortens the job (tests)."""
    from skeletons.cache import cache_dir

    final = cache_dir() / "warm-start" / (f"synthetic-{synthetic_model_tag()}" + (f"-r{rounds}" if rounds else ""))
    model = final / "global.npz"
    if model.is_file():
        return model
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    command = [sys.executable, "-m", "simulations.cli", "run", "--scenario", "synthetic", "--seed", "0",
               "--device", device, "--out", str(staging)]
    if rounds:
        command += ["--rounds", str(rounds)]
    # progress on stderr, so that stdout stays what the command prints (fedsar-sim private-recipe: TOML)
    print(f"private recipe: building the synthetic warm start once -> {final} "
          f"(the default synthetic job; about 1.5 minutes on 2 CPU cores)", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, stdout=_stderr_fd(), env=one_thread_environment(os.environ))
        if done.returncode != 0 or not (staging / "global.npz").is_file():
            raise UserError(f"private recipe: the synthetic warm start job failed (exit {done.returncode}); "
                            f"its output is above. Give --initial-model PATH to use another model.")
        try:
            staging.rename(final)
        except OSError:  # another run built it meanwhile: use theirs
            if not model.is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return model


def one_thread_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with one math-library thread per process: the warm start job's sites
    then add up their floats in the same order whatever the caller's ``OMP_NUM_THREADS``,
    so the cached model (and every private run started from it) is the same on every
    machine of one CPU type. Two threads per site gave another model (89.4% instead of
    90.0% after aggregation, on one machine), which would leave the recipe's published
    numbers unreproducible."""
    return {**environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _stderr_fd() -> int | None:
    """This process's stderr as a file descriptor for a child's output (None, the child
    then writes to our stdout, where stderr is no real file, e.g. in a notebook)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def check_recipe_loads(config: dict[str, Any]) -> None:
    """Load the recipe's warm start for the scenario's model as a coordinator would, so
    that keys printed for a scenario of another model (whose frozen blocks the synthetic
    warm start cannot fill) fail here, naming the scenario, not when the federation starts."""
    from server.federation import model_config_for
    from server.settings import RunSettings, with_scenario_defaults
    from simulations.run import check_warm_start
    from skeletons.scenario import resolve_scenario
    from strategies.registry import client_policy

    scenario = resolve_scenario(str(config["scenario"]), config.get("paths-file") or None)
    settings = RunSettings.from_run_config(with_scenario_defaults(config))
    model = model_config_for(scenario, settings.model_preset, settings.extra.get("model-overrides"))
    try:
        check_warm_start(scenario, settings, model, client_policy(settings.strategy, scenario.shared_label_set))
    except ValueError as err:
        raise UserError(f"private recipe for scenario {scenario.name!r}: {err}. The recipe's warm start is the "
                        f"synthetic job's model: for this scenario set initial-model in [run] to a model of its "
                        f"own (fedsar-sim run: --initial-model PATH)") from None


def add_arguments(parser: Any) -> None:
    parser.add_argument("--scenario", default="synthetic",
                        help="the scenario whose model sets frozen-blocks (built-in name or .toml path)")
    parser.add_argument("--device", default="auto", help="where the warm start job trains, if it must be built")


def run(args: Any) -> int:
    """``fedsar-sim private-recipe``: the recipe's run-config keys as TOML for a
    coordinator's ``[run]`` table, with the cached synthetic warm start's path (built
    first if missing)."""
    from skeletons.scenario import ScenarioError

    try:
        config = apply_private_recipe({"scenario": args.scenario}, set(), args.device)
        check_recipe_loads(config)
    except ScenarioError as err:
        raise UserError(str(err)) from None
    print(f"# the private recipe (fedsar-sim run --private-recipe) for scenario = {toml_value(args.scenario)} in [run],")
    print("# whose [defaults] set the other keys; add dp-epsilon, dp-delta, dp-max-grad-norm")
    for key in ("initial-model", "frozen-blocks", *(k for k in RECIPE_KEYS)):
        print(f"{key} = {toml_value(config[key])}")
    return 0
