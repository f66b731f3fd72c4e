"""``fedsar-server start --config federation.toml [--resume | --new-run]``."""

from __future__ import annotations

import argparse

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the coordinator's federation.toml")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--resume", action="store_true",
                       help="continue from the last round checkpoint in the state folder (starts at round 1 if there is none)")
    after.add_argument("--new-run", action="store_true",
                       help="move the previous run's checkpoints, results and status to the state folder's "
                            "previous/<time>/ and start a new run at round 1")


def run(args: argparse.Namespace) -> int:
    from server.daemon import Coordinator, CoordinatorError
    from server.federation_config import FederationConfigError, load_federation_config

    try:
        config = load_federation_config(args.config)
        return Coordinator(config, resume=args.resume, new_run=args.new_run).run()
    except (FederationConfigError, CoordinatorError) as err:
        raise UserError(str(err)) from None
