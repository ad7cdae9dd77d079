"""Who owns a run directory: one live ``perfkit`` per run, because two engines measuring into one run
corrupt it.

:class:`RunLock` is a file ``perfkit.lock`` in the run directory holding the owner's pid, its start time (so
a reused pid is not mistaken for the owner) and host, plus an advisory ``flock`` that the OS drops when the
owner dies. A live owner → :class:`RunLocked`; a dead owner's lock is stale and taken over with a message,
after waiting for the dead run's stragglers (processes whose environment names this run directory) to be
gone. That nothing of a run outlives its owner is :mod:`perfkit.core.children`'s job.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from perfkit.core.children import identity, owner_alive, run_processes
from perfkit.core.errors import PerfkitError

LOCK_NAME = "perfkit.lock"


class RunLocked(PerfkitError):
    """The run directory is owned by another live process."""


def describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "an unknown process"
    since = f", since {owner['since_utc']}" if owner.get("since_utc") else ""
    cmd = f" ({owner['command']})" if owner.get("command") else ""
    return f"pid {owner.get('pid')} on {owner.get('host', '?')}{cmd}{since}"


# ---- the lock ------------------------------------------------------------------------------------

def read_lock(run_dir: Path) -> dict[str, Any] | None:
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text()
    except OSError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


class RunLock:
    """Exclusive ownership of a run directory for this process; a context manager.

    Args:
        run_dir: the run directory (it must exist).
        command: what the owner does ("perfkit run", "perfkit report"), shown to whoever is refused.
        log: where the take-over of a stale lock is announced.
        straggler_wait_s: how long to wait for the processes of a dead owner to go.
    """

    def __init__(self, run_dir: str | Path, command: str = "perfkit run", log: Callable[[str], Any] = print,
                 straggler_wait_s: float = 10.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command, self.log, self.straggler_wait_s = command, log, straggler_wait_s
        self.fd: int | None = None
        self.owner: dict[str, Any] | None = None
        self.took_over: dict[str, Any] | None = None

    def _busy(self, owner: dict[str, Any] | None) -> RunLocked:
        return RunLocked(f"{self.run_dir} is in use by {describe(owner)}: another perfkit is measuring or "
                         "rendering this run. Wait for it to finish (or stop it), then try again.")

    def acquire(self) -> "RunLock":
        if self.fd is not None:
            return self
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise PerfkitError(f"{self.run_dir}: cannot create the lock file {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(read_lock(self.run_dir)) from None
            try:  # released (unlinked) between our open and our flock: lock the new file instead
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunLocked(f"{self.run_dir}: could not take the lock {self.path} (it keeps changing)")
        prev = read_lock(self.run_dir)
        if prev and prev.get("pid") != os.getpid():
            if owner_alive(prev):  # alive without holding the flock: another host, or an older perfkit
                os.close(fd)
                raise self._busy(prev)
            self.log(f"{self.run_dir}: stale lock of {describe(prev)}: that process is no longer running; "
                     "taking the run over")
            self.took_over = prev
            self._wait_for_stragglers(fd)
        me = {**identity(), "command": self.command, "since_utc": datetime.now(timezone.utc).isoformat(
            timespec="seconds")}
        data = json.dumps(me).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self.fd = fd
        self.owner = me
        return self

    def _wait_for_stragglers(self, fd: int) -> None:
        deadline = time.monotonic() + self.straggler_wait_s
        left = run_processes(self.run_dir)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = run_processes(self.run_dir)
        if left:
            os.close(fd)
            raise RunLocked(f"{self.run_dir}: processes of the run's dead owner are still running (pids "
                            f"{', '.join(map(str, left))}); stop them before resuming this run")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
