"""``fedsar-server``: the coordinator's entry point."""

from __future__ import annotations

from typing import Sequence

from skeletons.clikit import dispatch

COMMANDS = {
    "start": ("server.start_cmd", "start the coordinator (SuperLink with TLS and site authentication) and run the federation"),
    "status": ("server.status_cmd", "show rounds, connected sites and the latest metrics of a coordinator"),
    "stop": ("server.stop_cmd", "stop a running coordinator (its last checkpoint stays for --resume)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("fedsar-server", "Run the coordinator of a fedsar federation.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
