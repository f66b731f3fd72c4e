"""``fedsar-sim standins``: write small generated stand-ins of the fsar-paper data sets.

With them the whole benchmark path (readers, published splits, five sites, the run) can
be tried before the real data sets are on disk::

    fedsar-sim standins --out /tmp/standins
    fedsar-sim run --scenario fsar-paper --paths /tmp/standins/paths.toml --rounds 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simulations.standins import SITES, check_paths, write_standins
from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write the stand-ins and paths.toml into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic motions")
    parser.add_argument("--frames", type=int, default=48, help="frames per action take (before frame-rate shifts)")
    parser.add_argument("--sites", default=",".join(SITES),
                        help=f"comma-separated subset of {', '.join(SITES)} (default: all)")
    parser.add_argument("--replace", action="store_true", help="remove stand-in folders already under --out first")
    parser.add_argument("--no-check", action="store_true",
                        help="do not read the stand-ins back through the readers and the scenario's splits")


def run(args: argparse.Namespace) -> int:
    sites = [s.strip() for s in str(args.sites).split(",") if s.strip()]
    try:
        written = write_standins(args.out, seed=args.seed, frames=args.frames, sites=sites, replace=args.replace)
    except FileExistsError as err:
        raise UserError(f"{err} (--replace removes the stand-in folders first)") from None
    except ValueError as err:
        raise UserError(str(err)) from None
    counts: dict[str, tuple[int, int]] = {}
    if not args.no_check and len(sites) >= 2:
        counts = check_paths(written.paths_file)
    print(f"{'site':<10} {'format':<8} {'sequences':>9} {'classes':>7} {'subjects':>8} {'train':>6} {'test':>5}  path")
    for s in written.standins:
        train, test = counts.get(s.site, (s.train, s.test))
        print(f"{s.site:<10} {s.format:<8} {s.sequences:>9} {s.classes:>7} {s.subjects:>8} "
              f"{_count(train):>6} {_count(test):>5}  {s.path}")
    checked = "read back through the readers and the fsar-paper splits" if counts else "not read back"
    print(f"{written.sequences} sequences ({checked})")
    print(f"paths file: {written.paths_file}")
    print(f"try: fedsar-sim run --scenario fsar-paper --paths {written.paths_file} --rounds 1")
    return 0


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
