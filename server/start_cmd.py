"""``fedsar-server start --config federation.toml [--resume]``."""

from __future__ import annotations

import argparse

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the coordinator's federation.toml")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last round checkpoint in the state folder (starts at round 1 if there is none)")


def run(args: argparse.Namespace) -> int:
    from server.daemon import Coordinator, CoordinatorError
    from server.federation_config import FederationConfigError, load_federation_config

    try:
        config = load_federation_config(args.config)
        return Coordinator(config, resume=args.resume).run()
    except (FederationConfigError, CoordinatorError) as err:
        raise UserError(str(err)) from None
