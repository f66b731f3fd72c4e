"""Talk to a running SuperLink's Control API: register site keys, submit and watch runs.

This is what ``flwr supernode register``, ``flwr supernode ls``, ``flwr run`` and
``flwr ls`` do, called in-process so that the coordinator daemon can enrol many sites
quickly and watch its run without starting a CLI process each time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request is noise here


class ControlError(RuntimeError):
    """The SuperLink refused a Control API call or could not be reached."""


@dataclass
class NodeEntry:
    """One SuperNode the SuperLink knows: its id, status and public key (PEM)."""

    node_id: int
    status: str
    public_key: bytes
    name: str
    online_until: float


@dataclass
class RunEntry:
    """A run's status as the SuperLink reports it (``status`` like ``finished:completed``)."""

    run_id: int
    status: str
    details: str
    bytes_sent: int
    bytes_recv: int

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


def _error_text(err: httpx.HTTPStatusError) -> str:
    try:
        body = err.response.json()
    except (ValueError, json.JSONDecodeError):
        return err.response.text[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)


class Control:
    """A Control API session with one SuperLink (TLS, verified with the federation CA)."""

    def __init__(self, address: str, ca_certificate: str | Path, timeout: float = 30.0) -> None:
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

        self.address = address
        self._client = ControlHttpClient(
            f"https://{address}",
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
            verify=ssl.create_default_context(cafile=str(ca_certificate)),
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Control":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._client, method)(request)
        except httpx.HTTPStatusError as err:
            raise ControlError(f"SuperLink at {self.address} refused {method}: {_error_text(err)}") from None
        except httpx.HTTPError as err:
            raise ControlError(f"SuperLink at {self.address} cannot be reached ({method}): {err}") from None

    def ping(self) -> bool:
        """True when the SuperLink answers the Control API."""
        try:
            self.list_nodes()
        except ControlError:
            return False
        return True

    def list_nodes(self) -> list[NodeEntry]:
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._call("ListNodes", ListNodesRequest())
        return [
            NodeEntry(int(n.node_id), n.status, bytes(n.public_key), n.name, float(n.online_until))
            for n in res.nodes_info
        ]

    def register_node(self, public_key_pem: bytes, name: str) -> int:
        """Register a site's public key; an already registered key returns its node id."""
        from flwr.proto.control_pb2 import RegisterNodeRequest

        try:
            res = self._call("RegisterNode", RegisterNodeRequest(public_key=public_key_pem, name=name))
        except ControlError as err:
            if "already in use" not in str(err).lower():
                raise
            for node in self.list_nodes():
                if node.public_key == public_key_pem:
                    return node.node_id
            raise
        if not res.node_id:
            raise ControlError(f"SuperLink at {self.address} did not register site {name!r}")
        return int(res.node_id)

    def start_run(self, app_dir: str | Path) -> int:
        """Build a Flower App Bundle from ``app_dir`` and start it (``flwr run app_dir``)."""
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        fab_bytes = build_fab_from_disk(Path(app_dir))
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        res = self._call("StartRun", StartRunRequest(fab=fab_to_proto(fab)))
        if not res.HasField("run_id"):
            raise ControlError(f"SuperLink at {self.address} did not start the run")
        return int(res.run_id)

    def run(self, run_id: int) -> RunEntry | None:
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._call("ListRuns", ListRunsRequest(run_id=run_id))
        for rid, run in res.run_dict.items():
            if int(rid) == int(run_id):
                status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
                return RunEntry(int(rid), status, run.status.details, int(run.bytes_sent), int(run.bytes_recv))
        return None

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self._call("StopRun", StopRunRequest(run_id=run_id))

    def unregister_node(self, node_id: int) -> None:
        """Revoke a site: the SuperLink forgets its key and refuses it from now on."""
        from flwr.proto.control_pb2 import UnregisterNodeRequest

        self._call("UnregisterNode", UnregisterNodeRequest(node_id=node_id))

    def follow_logs(self, run_id: int, sink: TextIO, stop: threading.Event) -> None:
        """Copy the run's ServerApp log into ``sink`` until the run ends or ``stop`` is set
        (``flwr log --stream``); reconnects from the last timestamp after an error."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        after = 0.0
        while not stop.is_set():
            try:
                for res in self._client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=after)):
                    sink.write(res.log_output)
                    sink.flush()
                    after = max(after, res.latest_timestamp)
                    if stop.is_set():
                        return
                return  # the stream ends with the run
            except (httpx.HTTPError, ValueError) as err:
                log.debug("log stream of run %d interrupted (%s)", run_id, err)
                stop.wait(5.0)
