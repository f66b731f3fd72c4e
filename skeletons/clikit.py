"""Sub-command dispatch shared by every fedsar console script, and the thread count
their heavy commands default to (:func:`free_threads`).

Each sub-command lives in its own module with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen module is imported, so ``--help`` and light
commands stay fast and a heavy import (torch, ray) happens only where it is needed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

Commands = dict[str, tuple[str, str]]  # name -> (module, one-line help)
OWN_PACKAGES = ("skeletons", "models", "strategies", "client", "server", "privacy", "simulations")


def counted(count: int, noun: str) -> str:
    """``1 round``, ``3 rounds``: a count with its noun, for the lines commands print."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _not_flower(record: logging.LogRecord) -> bool:
    return record.name != "flwr" and not record.name.startswith("flwr.")


def configure_logging(verbose: bool = False) -> None:
    """fedsar's own INFO lines on stderr; libraries stay at WARNING unless ``verbose``.

    Replaces the root logger's plain console handlers, which is what a library's
    ``logging.basicConfig`` installs (Opacus calls it when imported, which would otherwise
    decide the format of every line); other handlers (files, a test's capture) stay.
    Flower's records are left to Flower's own console handler, so none is printed twice."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.addFilter(_not_flower)
    root.addHandler(console)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for package in OWN_PACKAGES:
        logging.getLogger(package).setLevel(logging.DEBUG if verbose else logging.INFO)


def dispatch(prog: str, description: str, commands: Commands, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` for ``prog``, run the chosen sub-command and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<12} {h}" for n, (_, h) in commands.items()),
    )
    top.add_argument("command", choices=list(commands), metavar="COMMAND")
    if not argv or argv[0] not in commands:
        top.parse_args(argv[:1] or ["--help"])  # prints usage and exits
        return 2
    name = argv[0]
    module_name, help_text = commands[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=help_text)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    configure_logging(args.verbose)
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"{prog} {name}: error: {err}", file=sys.stderr)
        return 2


class UserError(Exception):
    """A problem with the user's input (file, field, value) that a command reports plainly."""


def free_threads(requested: int) -> int:
    """Torch CPU threads for a command: ``requested`` if positive, else the cores the
    1-minute load average leaves idle (at least one). More threads than idle cores make
    each one wait on the others: on a 2-core machine with one core busy, two threads
    ran an audit ten times slower than one."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - int(load)))  # a core counts as busy once a whole one is
