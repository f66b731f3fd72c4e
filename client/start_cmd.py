"""``fedsar-client start --site site.toml``."""

from __future__ import annotations

import argparse

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="this site's site.toml")
    parser.add_argument("--skip-data-check", action="store_true",
                        help="do not load the data before connecting (only check that its folder is readable)")


def run(args: argparse.Namespace) -> int:
    from client.daemon import EXIT_REFUSED, SiteDaemon, SiteDaemonError
    from client.site_config import SiteConfigError, load_site_config

    try:
        site = load_site_config(args.site)
        return SiteDaemon(site).run(check_data=not args.skip_data_check)
    except SiteConfigError as err:
        raise UserError(str(err)) from None
    except SiteDaemonError as err:
        print(f"fedsar-client start: refused: {err}", flush=True)
        return EXIT_REFUSED
