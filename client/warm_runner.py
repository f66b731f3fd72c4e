"""Run a site's ClientApp tasks from a warm process instead of a fresh interpreter each time.

Flower's own SuperExec starts a new ``flwr-clientapp`` interpreter for every message
(every train and every evaluate), which pays for importing torch and the model code
each time: seconds of CPU per message, tens of seconds on a busy machine. A SuperNode
started with ``--isolation process`` leaves task execution to an outside process; this
one imports everything once, asks the SuperNode's local Runtime API for tasks, and
forks a child per task that runs Flower's own ``run_clientapp`` (pull the message,
call the ClientApp, push the reply). The child is a copy of the warm process, so it
starts in milliseconds, and a crash in one task cannot take the runner down.

Start: ``python -m client.warm_runner --runtime-api-address 127.0.0.1:PORT``
(``fedsar-client start`` does this when the site config says ``executor = "warm"``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Sequence

log = logging.getLogger("fedsar.warm_runner")


def _preload() -> None:
    """Import what every task needs, without running any torch op (fork safety)."""
    import torch  # noqa: F401

    import client.app  # noqa: F401
    import client.trainer  # noqa: F401
    import models  # noqa: F401
    from flwr.supernode.runtime import run_clientapp  # noqa: F401


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            children.discard(pid)
            continue
        if done:
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                log.warning("task process %d ended with exit code %d", pid, code)
                _count_failure()


def _count_failure() -> None:
    """A failed task shows in the site's metrics (``fedsar_site_failures_total``)."""
    from client.metrics import METRICS_ENV, update_metrics

    path = os.environ.get(METRICS_ENV)
    if path:
        update_metrics(path, lambda doc: doc.update(failures=int(doc.get("failures", 0)) + 1))


def _run_task(address: str, token: str) -> None:
    """Body of the forked child: one task, then exit without returning to the loop."""
    code = 1
    try:
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run_clientapp(runtime_api_address=address, token=token, insecure=True, runtime_dependency_install=False)
        code = 0
    except SystemExit as done:
        code = int(done.code or 0) if isinstance(done.code, int) or done.code is None else 1
    except BaseException:  # noqa: BLE001 - the child must never fall back into the parent's loop
        log.exception("task failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(address: str, parent_pid: int | None, poll_s: float = 0.5, max_tasks: int = 2) -> int:
    """Poll the SuperNode for ClientApp tasks until the parent process goes away."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    _preload()
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    children: set[int] = set()
    log.info("warm runner ready for tasks from %s", address)
    while not stopping:
        if parent_pid is not None and os.getppid() != parent_pid:
            log.info("parent process %d is gone; stopping", parent_pid)
            break
        _reap(children)
        if len(children) < max_tasks:
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
            except Exception as err:  # noqa: BLE001 - the SuperNode may be restarting
                log.debug("no task (%s)", err)
                res = None
            if res is not None and res.HasField("task") and res.token:
                pid = os.fork()
                if pid == 0:
                    _run_task(address, res.token)
                children.add(pid)
                log.info("task %d of run %d -> process %d", res.task.task_id, res.task.run_id, pid)
                continue
        time.sleep(poll_s)
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.warm_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process is no longer the parent")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between task polls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return serve(args.runtime_api_address, args.parent_pid, args.poll_interval)


if __name__ == "__main__":
    raise SystemExit(main())
