"""``fedsar-client``: the site's entry point."""

from __future__ import annotations

from typing import Sequence

from skeletons.clikit import dispatch

COMMANDS = {
    "start": ("client.start_cmd", "start this site's SuperNode and take part in the federation"),
    "check": ("client.check_cmd", "check the site config, keys, CA certificate and data without connecting"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("fedsar-client", "Run one site of a fedsar federation.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
