"""Every process perfkit starts, in one registry, so that nothing of a run outlives the perfkit that started it.

A run is a process tree: ``perfkit run`` → papermill → the notebook's kernel → the servers perfkit starts
(llama-server and its model processes, nginx and its workers, and whatever comes next). Each server
registers here (:func:`register`) while it runs; the registry stops them all at interpreter exit and, in a
study's kernel, the **lifeline** (:func:`start_lifeline`) SIGKILLs their process groups the moment the
owning ``perfkit`` is gone, ``kill -9`` included.

* papermill is started with ``PR_SET_PDEATHSIG = SIGKILL`` (:func:`die_with_parent`). The kernel sends that
  signal when the *thread* that forked the child exits, so perfkit forks papermill from its main thread and
  the child checks, after arming it, that its parent is still the one that forked it.
* The kernel is started by papermill/jupyter_client, not by us, so no death signal can be armed for it.
  Instead it runs the lifeline thread: every 0.2 s it checks that its parent is unchanged *and* that the
  perfkit process named in ``$PERFKIT_OWNER`` (pid + start time, inherited through papermill) is alive;
  when either fails it kills the process groups of everything registered and exits.
* Each server runs in its own process group with ``PR_SET_PDEATHSIG = SIGTERM`` (:func:`spawn`).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

ENV_OWNER = "PERFKIT_OWNER"  # "<pid>:<start time>" of the perfkit process that owns the run
ENV_RUN_DIR = "PERFKIT_RUN_DIR"  # the run directory, resolved; marks every process of the run
RUN_ENV = (ENV_OWNER, ENV_RUN_DIR)
_PR_SET_PDEATHSIG = 1


class Child(Protocol):
    """A server perfkit started: its process group (None once stopped), and how to stop it cleanly."""

    @property
    def process_group(self) -> int | None: ...

    def stop(self) -> None: ...


_CHILDREN: "weakref.WeakSet[Any]" = weakref.WeakSet()
_LOCK = threading.Lock()


def register(child: Child) -> None:
    """Track ``child`` until :func:`unregister`: stopped at exit, killed by the lifeline."""
    with _LOCK:
        _CHILDREN.add(child)


def unregister(child: Child) -> None:
    with _LOCK:
        _CHILDREN.discard(child)


def running() -> list[Any]:
    with _LOCK:
        return list(_CHILDREN)


@atexit.register
def stop_all() -> None:
    """Stop every registered server (interpreter exit, error or Ctrl-C that reached the top)."""
    for child in running():
        try:
            child.stop()
        except Exception:  # noqa: BLE001 - stopping the others matters more than this one's error
            pass


def kill_all() -> None:
    """SIGKILL the process group of every registered server, at once (the lifeline's last act)."""
    for child in running():
        pgid = child.process_group
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass


# ---- starting and stopping a process group -----------------------------------------------------------

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


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without the variables that mark a process as part of a run: a
    server perfkit restarts for a user (their Ollama) must not look like one of the run's stragglers."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in RUN_ENV}


def spawn(cmd: Sequence[str], *, stdout: Any, die_with_parent_signal: int | None = signal.SIGTERM,
          env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a process group of its own (so a stop reaches its children), stderr with stdout,
    no stdin; with ``die_with_parent_signal``, the kernel sends that signal if perfkit dies."""
    return subprocess.Popen(list(cmd), stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=cwd,
                            preexec_fn=die_with_parent(die_with_parent_signal) if die_with_parent_signal else None)


def kill_process_group(pgid: int, grace_s: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left after ``grace_s`` seconds.

    ``proc``: the group leader if it is our child. It must be reaped while we wait: an exited but
    unreaped leader is a zombie that still counts as a group member, so without ``poll()`` every stop
    would wait the whole grace period (it made each engine restart take 10 s).
    """
    if not pgid or pgid <= 1 or pgid == os.getpgrp():  # 0 would mean our own group: never
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- process identity ---------------------------------------------------------------------------------

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


def owner_env(run_dir: Path) -> dict[str, str]:
    """Environment for the run's child processes: who owns them, which run they belong to."""
    me = identity()
    return {ENV_OWNER: f"{me['pid']}:{me['start_time']}", ENV_RUN_DIR: str(Path(run_dir).resolve())}


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


# ---- the lifeline ---------------------------------------------------------------------------------------

_lifeline: threading.Thread | None = None


def _kill_all_and_exit() -> None:
    try:
        kill_all()
    finally:
        os._exit(137)


def start_lifeline(poll_s: float = 0.2) -> bool:
    """In a study process started by ``perfkit run``: die (with every server registered here) when the
    owner dies. Does nothing outside perfkit (``$PERFKIT_OWNER`` unset, e.g. a notebook opened in
    JupyterLab). Returns whether a lifeline runs."""
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
                _kill_all_and_exit()

    if not owner_alive(who):
        _kill_all_and_exit()
    _lifeline = threading.Thread(target=watch, name="perfkit-lifeline", daemon=True)
    _lifeline.start()
    return True
