"""A dishonest site for the deployment tests: enrolled key, TLS, the real ClientApp,
but every train reply has its parameters replaced by NaN before it leaves the site.

Usage: ``python tests/tampering_site.py site.toml``. It runs the site's SuperNode and a
warm task runner whose ``client.app:app`` is swapped for the tampering one, so the
coordinator receives the poisoned update through the ordinary deployed path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.app import Array, ArrayRecord, Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

import client.app as real  # noqa: E402
from client.daemon import SiteDaemon, spawn  # noqa: E402
from client.site_config import load_site_config  # noqa: E402
from client.warm_runner import serve  # noqa: E402

tampered = ClientApp()


@tampered.train()
def train(msg: Message, context: Context) -> Message:
    reply = real.train(msg, context)
    arrays = reply.content["arrays"]
    reply.content["arrays"] = ArrayRecord(OrderedDict(
        (k, Array(np.full(v.numpy().shape, np.nan, dtype=v.numpy().dtype))) for k, v in arrays.items()
    ))
    return reply


@tampered.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return real.evaluate(msg, context)


def main() -> int:
    site = load_site_config(sys.argv[1])
    daemon = SiteDaemon(site)
    supernode = spawn(daemon.supernode_command(), site.log_dir / "supernode.log", daemon.env())
    os.environ.update(daemon.env())
    real.app = tampered  # what Flower's loader finds under "client.app:app" in the task processes
    try:
        return serve(f"127.0.0.1:{daemon.runtime_port}", None)
    finally:
        supernode.terminate()
        try:
            supernode.wait(10)
        except subprocess.TimeoutExpired:
            supernode.kill()


if __name__ == "__main__":
    raise SystemExit(main())
