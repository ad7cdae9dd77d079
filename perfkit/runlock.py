"""Who owns a run directory, and making sure nothing of a run outlives the perfkit that started it.

A run is measured by a process tree: ``perfkit run`` → papermill → the notebook's kernel → llama-server
(router and model processes). Two guarantees, because two engines measuring into one run corrupt it:

* **Nothing outlives perfkit** (Linux), even after ``kill -9``:

  - papermill is started with ``PR_SET_PDEATHSIG = SIGKILL`` (:func:`die_with_parent`). The kernel sends
    that signal when the *thread* that forked the child exits, so perfkit forks papermill from its main
    thread (``report.execute`` runs there) and the child checks, after arming it, that its parent is
    still the one that forked it (a parent dying in between would otherwise go unnoticed).
  - The kernel is started by papermill/jupyter_client, not by us, so we cannot arm a death signal for
    it; arming one from inside the kernel would tie it to whichever papermill thread happened to fork
    it. Instead the study process runs a **lifeline** thread (:func:`start_lifeline`, called by the
    notebook's first call ``perfkit.studies.run_or_load``): every 0.2 s it checks that its parent is
    unchanged *and* that the perfkit process named in ``$PERFKIT_OWNER`` (pid + start time, inherited
    through papermill) is alive; when either fails it SIGKILLs the process groups of its engines and
    exits. (ipykernel's own parent poller would also end the kernel within ~1 s of papermill dying,
    but with ``os._exit``, which skips the engine's clean-up; the lifeline does not depend on it.)
  - llama-server has its own process group and ``PR_SET_PDEATHSIG`` (``engine.py``).

* **One owner per run directory**: :class:`RunLock` is a file ``perfkit.lock`` in the run directory
  holding the owner's pid, its start time (so a reused pid is not mistaken for the owner) and host,
  plus an advisory ``flock`` that the OS drops when the owner dies. A live owner → :class:`RunLocked`;
  a dead owner's lock is stale and taken over with a message, after waiting for the dead run's
  stragglers (processes whose environment names this run directory) to be gone.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .errors import PerfkitError

LOCK_NAME = "perfkit.lock"
ENV_OWNER = "PERFKIT_OWNER"  # "<pid>:<start time>" of the perfkit process that owns the run
ENV_RUN_DIR = "PERFKIT_RUN_DIR"  # the run directory, resolved; marks every process of the run
_PR_SET_PDEATHSIG = 1


class RunLocked(PerfkitError):
    """The run directory is owned by another live process."""


# ---- process identity ---------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, None if there is none."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        if Path("/proc/self/stat").exists():
            return None
        try:  # not Linux: psutil
            import psutil

            p = psutil.Process(int(pid))
            return ("Z" if p.status() == psutil.STATUS_ZOMBIE else "R"), int(p.create_time() * 100)
        except Exception:  # noqa: BLE001 - no such process, or no permission to look
            return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])  # field 3 (state) and field 22 (starttime) of proc(5)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie."""
    st = _proc_stat(pid)
    return None if st is None or st[0] in ("Z", "X") else st[1]


def identity(pid: int | None = None) -> dict[str, Any]:
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_time": start_time(pid), "host": socket.gethostname()}


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Is the process this identity names still running (same pid *and* same start time)?"""
    if not owner or not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return False
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another host's process: we cannot tell, so it is not ours to take over
    st = start_time(owner["pid"])
    return st is not None and (owner.get("start_time") is None or st == owner["start_time"])


def describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "an unknown process"
    since = f", since {owner['since_utc']}" if owner.get("since_utc") else ""
    cmd = f" ({owner['command']})" if owner.get("command") else ""
    return f"pid {owner.get('pid')} on {owner.get('host', '?')}{cmd}{since}"


def run_processes(run_dir: Path, exclude_owner: str | None = None) -> list[int]:
    """Pids of processes that belong to the run in ``run_dir`` (``$PERFKIT_RUN_DIR`` in their environment)."""
    want = f"{ENV_RUN_DIR}={Path(run_dir).resolve()}".encode()
    skip = f"{ENV_OWNER}={exclude_owner}".encode() if exclude_owner else None
    me = os.getpid()
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in env and (skip is None or skip not in env) and int(d.name) != me and start_time(int(d.name)):
            out.append(int(d.name))
    return out


def owner_env(run_dir: Path) -> dict[str, str]:
    """Environment for the run's child processes: who owns them, which run they belong to."""
    me = identity()
    return {ENV_OWNER: f"{me['pid']}:{me['start_time']}", ENV_RUN_DIR: str(Path(run_dir).resolve())}


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


# ---- dying with the owner ------------------------------------------------------------------------

def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for Popen: the child gets ``sig`` when the forking thread of this process exits.

    Fork from the main thread: the death signal follows the thread, not the process.
    """
    parent = os.getpid()

    def arm() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


_lifeline: threading.Thread | None = None


def _kill_engines_and_exit() -> None:
    try:
        from .engine import _RUNNING

        for eng in list(_RUNNING):
            proc = eng.proc
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
    finally:
        os._exit(137)


def start_lifeline(poll_s: float = 0.2) -> bool:
    """In a study process started by ``perfkit run``: die (with the engines) when the owner dies.

    Does nothing outside perfkit (``$PERFKIT_OWNER`` unset, e.g. a notebook opened in JupyterLab).
    Returns whether a lifeline runs.
    """
    global _lifeline
    owner = os.environ.get(ENV_OWNER, "")
    if _lifeline is not None:
        return True
    try:
        pid_s, start_s = owner.split(":", 1)
        who = {"pid": int(pid_s), "start_time": int(start_s) if start_s not in ("", "None") else None}
    except ValueError:
        return False
    ppid = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != ppid or not owner_alive(who):
                _kill_engines_and_exit()

    if not owner_alive(who):
        _kill_engines_and_exit()
    _lifeline = threading.Thread(target=watch, name="perfkit-lifeline", daemon=True)
    _lifeline.start()
    return True
