"""``fedsar-privacy keys``: the CA, the coordinator's TLS certificate and one key pair per site."""

from __future__ import annotations

import argparse
from pathlib import Path

from skeletons.clikit import UserError

LOOPBACK = ("localhost", "127.0.0.1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for ca.crt, server.crt/.key and sites/<name>.key/.pub")
    parser.add_argument("--sites", required=True, help="comma-separated site names, e.g. hospital-a,hospital-b")
    parser.add_argument("--hosts", default="localhost,127.0.0.1",
                        help="comma-separated DNS names and IPs the sites use to reach the coordinator "
                             "(localhost and 127.0.0.1 are always added: the SuperLink's own processes use them)")
    parser.add_argument("--force", action="store_true", help="replace existing keys and certificates (locks out sites holding old keys)")


def run(args: argparse.Namespace) -> int:
    from privacy.keys import KeyFileError, KeyLayout, generate_keys

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if not sites:
        raise UserError("--sites: give at least one site name")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    hosts += [h for h in LOOPBACK if h not in hosts]
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder for the keys")
    try:
        report = generate_keys(Path(args.out), sites, hosts, force=args.force)
    except KeyFileError as err:
        raise UserError(str(err)) from None
    layout = KeyLayout(Path(args.out))
    for path in report.written:
        print(f"wrote {path}")
    for path in report.kept:
        print(f"kept  {path} (exists; --force replaces it)")
    print()
    print(f"coordinator: keep {layout.server_key} and {layout.ca_key} private; give every site {layout.ca_cert}")
    print("sites: give each site its own sites/<name>.key (private, mode 0600) and the CA certificate;")
    print("       list sites/<name>.pub under [[sites]] in the coordinator's federation.toml")
    return 0
