"""``fedsar-client check --site site.toml``: everything ``start`` checks, without connecting."""

from __future__ import annotations

import argparse

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="this site's site.toml")


def run(args: argparse.Namespace) -> int:
    from client.site_config import SiteConfigError, check_site_ready, load_site_config
    from skeletons.site_data import site_dataset

    try:
        site = load_site_config(args.site)
        check_site_ready(site, load_data=True)
    except SiteConfigError as err:
        raise UserError(str(err)) from None
    data = site_dataset(site.spec, site.data_root, site.layout)
    print(f"site {site.name}: ready")
    print(f"  coordinator  {site.address} (CA {site.ca_certificate})")
    print(f"  key          {site.private_key}")
    print(f"  data         {site.spec.dataset} at {site.data_path or '(generated)'}: {len(data.samples)} sequences, "
          f"{len(data.classes)} classes, {len(data.subjects)} subjects, layout {site.layout}")
    print(f"  state        {site.state_dir}")
    if site.privacy.epsilon is not None:
        bound = site.privacy.max_noise_multiplier
        print(f"  privacy      epsilon {site.privacy.epsilon}, delta {site.privacy.delta}, ledger {site.ledger_path}"
              + (f", declines rounds that need noise multiplier above {bound:g}" if bound is not None else ""))
    return 0
