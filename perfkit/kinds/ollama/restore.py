"""How a user's server gets its own settings back, whatever ends the run that changed them.

While perfkit runs a user's server on other settings, a **restore record** says how to give them back: the URL,
the restart command and the server's own ``OLLAMA_*`` environment. The record lives on the server's host, one per
port, in perfkit's state directory (``$PERFKIT_STATE_DIR``, else ``$XDG_STATE_HOME/perfkit``, else
``~/.local/state/perfkit``), so that whatever perfkit next runs on that host finds it, whichever results directory
it writes to. Copies (``mirrors``) may sit in a run's directory, for the runs that look there.

Each record has a **watchdog**: a process of its own session, outside the run's process tree (a ``kill -9`` of the
run, the end of a Ray actor or a lifeline's kill does not reach it), that waits for the process that wrote the
record. When that process is gone and the record is still there, the watchdog restores the server at once and
exits; when the record is removed (the writer restored the server itself), it exits too. The restore is under a
lock, so a watchdog and a new perfkit never restart the same server at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from perfkit.core.children import clean_env, identity, owner_alive
from perfkit.core.secrets import SECRET_KEY

WATCHDOG_MODULE = "perfkit.kinds.ollama.watchdog"


def state_dir() -> Path:
    """perfkit's state on this host (what must outlive a run, never a result)."""
    if os.environ.get("PERFKIT_STATE_DIR"):
        return Path(os.environ["PERFKIT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "perfkit"


def host_record_path(port: int) -> Path:
    """Where the record of the server listening on ``port`` of this host lives."""
    return state_dir() / "restore" / f"ollama-{int(port)}.json"


@dataclass
class RestoreRecord:
    """How to give a user's server its own settings back.

    ``user_env``: the server's own OLLAMA_* variables (secret-looking ones left out: a restore without them beats
    a secret on disk). ``writer``: the process that changed the server (pid, start time, host). ``server_pid``: the
    server that process started, on the run's settings (None while a restart is under way): a server someone else
    has restarted or stopped since is not perfkit's change any more, and is left alone. ``mirrors``: copies of this
    record elsewhere (a run's directory), removed with it."""

    url: str
    restart_command: list[str]
    user_env: dict[str, str]
    ready_timeout_s: float = 120.0
    writer: dict[str, Any] = field(default_factory=identity)
    written_unix_s: float = field(default_factory=time.time)
    mirrors: list[str] = field(default_factory=list)
    server_pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["user_env"] = {k: v for k, v in self.user_env.items() if not SECRET_KEY.search(k)}
        return d

    @property
    def writer_alive(self) -> bool:
        return owner_alive(self.writer)


def read(path: Path) -> RestoreRecord | None:
    """The record at ``path``; None when there is none or it is not one (a torn write is never left: see write)."""
    try:
        d = json.loads(Path(path).read_text())
        return RestoreRecord(url=d["url"], restart_command=list(d["restart_command"]),
                             user_env=dict(d.get("user_env") or {}),
                             ready_timeout_s=float(d.get("ready_timeout_s") or 120.0),
                             writer=dict(d.get("writer") or {}), written_unix_s=float(d.get("written_unix_s") or 0),
                             mirrors=list(d.get("mirrors") or []), server_pid=d.get("server_pid"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(path: Path, record: RestoreRecord) -> None:
    """Write ``record`` at ``path`` and at each of its mirrors, each atomically."""
    text = json.dumps(record.as_dict())
    for p in [Path(path), *map(Path, record.mirrors)]:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)


def remove(path: Path) -> None:
    """Remove the record and its mirrors (the server has its own settings again)."""
    rec = read(path)
    path = Path(path)
    for p in [*(map(Path, rec.mirrors) if rec else ()), path, path.with_name(path.name + ".lock")]:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def restoring(path: Path) -> Iterator[RestoreRecord | None]:
    """Hold the record's lock; yields the record as it is once held (None: someone restored it meanwhile)."""
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield read(path)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def orphaned(port: int | None = None) -> list[Path]:
    """Host records (of ``port``, or all) whose writer is gone: servers still on a dead run's settings."""
    d = state_dir() / "restore"
    paths = [host_record_path(port)] if port is not None else sorted(d.glob("ollama-*.json"))
    out = []
    for p in paths:
        rec = read(p)
        if rec is not None and not rec.writer_alive:
            out.append(p)
    return out


def start_watchdog(path: Path) -> int | None:
    """Start the record's watchdog (see the module's docstring); its pid, None if it could not start.

    It runs ``python -m perfkit.kinds.ollama.watchdog PATH`` in a session of its own, with none of the run's
    environment (it is not one of the run's processes, which a next run would end), and detaches from us: the
    process we start forks the watchdog and exits, so no process of ours is its parent."""
    try:
        p = subprocess.Popen([sys.executable, "-m", WATCHDOG_MODULE, str(path)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                             env=clean_env(), cwd="/")
        out, _ = p.communicate(timeout=30)
        return int(out.strip() or 0) or None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def watch(path: Path, restore, poll_s: float = 0.2) -> str:
    """The watchdog's loop: until the record is gone, or its writer is and ``restore(path)`` has given the server
    back (``restore`` takes the lock). Returns what happened, in a line."""
    while True:
        rec = read(path)
        if rec is None:
            return "the record is gone: the server has its own settings"
        if not rec.writer_alive:
            try:
                info = restore(path)
            except Exception as e:  # noqa: BLE001 - the record stays: the next perfkit on this host tries again
                return f"could not restore {rec.url}: {e}"
            return (f"restored {rec.url} (pid {info.pid_after})" if info is not None else
                    f"nothing to restore at {rec.url}: restored by another, or no longer the server perfkit started")
        time.sleep(poll_s)
