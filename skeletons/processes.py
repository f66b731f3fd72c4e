"""Child processes of the coordinator and site daemons (SuperLink, SuperNode).

Both daemons start a Flower process, log its output to a file, make it die with the
daemon, and stop it politely before forcing it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TextIO


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the daemon dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def lock_state_folder(folder: Path) -> TextIO | None:
    """An exclusive lock on ``folder/daemon.lock``, held while the returned file stays
    open (the OS drops it when the process dies); None when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / "daemon.lock", "w")  # noqa: SIM115 - the open file is the lock
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def spawn(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` with its output appended to ``log_path``; it dies with this process."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out: TextIO = open(log_path, "a")  # noqa: SIM115 - kept open for the child's lifetime
    out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
    out.flush()
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _ancestors() -> set[int]:
    """This process and its parents, which may carry the marker a daemon sets for its children."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def processes_marked(name: str, value: str) -> list[int]:
    """Live processes of this user whose environment holds ``name=value`` (Linux; none elsewhere).

    A daemon marks the Flower processes it starts this way. Flower detaches some of their
    children (the SuperLink's SuperExec and its ServerApp) into sessions of their own, so
    when the daemon is killed they can outlive it and must be found by their marker.
    """
    entry = f"{name}={value}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    mine = _ancestors()
    found = []
    for child in proc.iterdir():
        if not child.name.isdigit() or int(child.name) in mine:
            continue
        try:
            if entry in (child / "environ").read_bytes().split(b"\0"):
                found.append(int(child.name))
        except OSError:  # gone, or another user's process
            continue
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait remains


def stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM each process, then SIGKILL those still running after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
