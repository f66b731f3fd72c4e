"""How well the learned anonymizer's own action recognizer classifies each site's test
split: ``python -m privacy.recognizer_sites --scenario hetero-datasets --data-root DIR``.

A site that anonymizes with ``learned`` trains on sequences that are mostly the
prototype of the action this recognizer predicts, so the site's accuracy follows the
recognizer's. This trains exactly that recognizer (``train_action_recognizer`` with the
anonymizer's defaults, on the bone-normalized training split, as a site fits it) and
scores it on the same site's bone-normalized test split, per site of a scenario.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from privacy.anonymizer import AnonymizerConfig, train_action_recognizer
from privacy.bone_normalize import normalize_bones
from skeletons.atomic import write_report
from skeletons.layouts import get_layout
from skeletons.scenario import Scenario
from skeletons.site_data import load_site


def site_top1(scenario: Scenario, data_root: str | None, config: AnonymizerConfig, seed: int) -> dict[str, Any]:
    """Per site: the recognizer's top-1 on its test split, sizes and seconds."""
    layout = get_layout(scenario.layout)
    sites = {}
    for spec in scenario.sites:
        started = time.perf_counter()
        arrays = load_site(spec, data_root, scenario.layout, scenario.num_frames, scenario.num_persons, seed)
        x_train = torch.from_numpy(normalize_bones(arrays.x_train, layout, config.bones))
        x_test = torch.from_numpy(normalize_bones(arrays.x_test, layout, config.bones))
        net = train_action_recognizer(layout, x_train, torch.from_numpy(arrays.y_train), config,
                                      torch.Generator().manual_seed(seed), seed + 2)
        net.eval()
        with torch.no_grad():
            probs = sum(F.softmax(part(x_test)[0], dim=1) for part in net)
        top1 = float((probs.argmax(dim=1) == torch.from_numpy(arrays.y_test)).float().mean())
        sites[spec.name] = {"top1": top1, "train": int(len(arrays.y_train)), "test": int(len(arrays.y_test)),
                            "classes": arrays.num_classes, "seconds": time.perf_counter() - started}
        print(f"{spec.name}: {100 * top1:.1f}% on {len(arrays.y_test)} test sequences "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
    return {"sites": sites, "mean_top1": statistics.fmean(s["top1"] for s in sites.values()),
            "recognizers": config.teacher_ensemble, "epochs": config.action_teacher_epochs, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    from skeletons.clikit import UserError
    from skeletons.scenario import ScenarioError, scenario_for_command

    parser = argparse.ArgumentParser(prog="python -m privacy.recognizer_sites", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, help="built-in scenario name or a .toml path")
    parser.add_argument("--data-root", default=None, help="folder holding the real data sets")
    parser.add_argument("--seed", type=int, default=0, help="the run seed a simulated site would use")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    scenario = scenario_for_command(parser, args.scenario, args.data_root)
    try:
        report = site_top1(scenario, args.data_root, AnonymizerConfig(seed=args.seed), args.seed)
    except (ScenarioError, UserError) as err:
        parser.error(str(err))
    report["scenario"] = scenario.name
    print(f"\n{scenario.name}: mean {100 * report['mean_top1']:.1f}% over {len(report['sites'])} sites")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
