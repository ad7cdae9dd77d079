"""An Ollama that perfkit starts itself with a command (``ollama serve``) and owns: it sees everything a local
Ollama shows, restarts it with settings by starting it again, can kill it as a crash would (the fleet's
failover) and stops it when done. perfkit's agent on a server host runs servers this way, so none outlives
the agent (each dies with the process that started it)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

from perfkit.core import children
from perfkit.core.clock import now_ns
from perfkit.core.errors import PerfkitError
from perfkit.kinds.ollama.settings import to_env
from perfkit.servers.control.base import RestartInfo
from perfkit.kinds.ollama.control import LocalOllamaControl, base_env


class OwnedOllamaControl(LocalOllamaControl):
    """Args:
        url: the server's URL (its port finds the process, as for a user's Ollama).
        command: argument list that runs the server in the foreground (``[ollama, serve]``).
        env: the server's environment beyond perfkit's (``OLLAMA_MODELS``, ...); settings are added to it.
        log_path: where the server's output goes; it is the server's log.
    """

    name = "ollama-owned"

    def __init__(self, url: str, command: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path,
                 headers: Mapping[str, str] | None = None, ready_timeout_s: float = 120.0):
        from perfkit.servers.serverlog import FileLogSource

        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        super().__init__(url, log=FileLogSource(str(log_path)), headers=headers, ready_timeout_s=ready_timeout_s)
        self.command, self.env, self.log_path = list(command), dict(env or {}), log_path
        self.proc = None
        # The death signal follows the thread that forked: one thread, alive as long as this object, forks every
        # start, so a server dies with its owner whichever thread asked for the start.
        self._forker = _Forker()

    # ---- what LocalOllamaControl asks ---------------------------------------------------------------------
    def can_restart(self) -> bool:
        return True

    def why_not_local(self) -> str:
        return f"the server perfkit started with {self.command[0]} is not running"

    def restart(self, settings: Mapping[str, Any] | None) -> RestartInfo:
        """Stop the server (if running) and start it with ``settings`` in its environment (None: the last ones)."""
        if settings is None:
            settings = self._settings
        self._settings = dict(settings)
        pid_before = self.proc.pid if self.proc is not None and self.proc.poll() is None else None
        if self.log:
            self._log_mark = self.log.mark()
        wall, t0 = time.time(), now_ns()
        self.stop()
        env = base_env()
        env.update(self.env)
        env.update(to_env(settings))
        env.setdefault("OLLAMA_HOST", f"{self.host}:{self.port}")
        with open(self.log_path, "ab") as logf:
            self.proc = self._forker.run(lambda: children.spawn(self.command, stdout=logf, env=env,
                                                                die_with_parent_signal=signal.SIGKILL))
        children.register(self)
        self._wait_ready()
        info = RestartInfo(t0, now_ns(), wall, pid_before, self.proc.pid)
        self.restarts.append(info)
        return info

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(headers=self.headers, timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise PerfkitError(f"`{' '.join(self.command)}` exited with {self.proc.returncode} before it "
                                       f"answered; its output: {self.log_path}")
                try:
                    if c.get(self.url + "/api/version").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise PerfkitError(f"`{' '.join(self.command)}` did not answer at {self.url} within {self.ready_timeout_s:g} s")

    def restore(self) -> RestartInfo | None:
        """Nothing of a user's to give back: the server is perfkit's own, stopped by ``stop``."""
        return None

    # ---- a crash, and the end ----------------------------------------------------------------------------
    def can_kill(self) -> bool:
        return True

    def revive(self) -> RestartInfo:
        return self.restart(None)

    def kill(self) -> int:
        """SIGKILL the server and its model processes, as a crash would; when (perf_counter ns)."""
        t = now_ns()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        return t

    @property
    def process_group(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def stop(self) -> None:
        if self.proc is not None:
            children.kill_process_group(self.proc.pid, grace_s=10.0, proc=self.proc)
            self.proc.wait()
        children.unregister(self)

    def close(self) -> None:
        self.stop()
        self._forker.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "command": self.command, "started_by": "perfkit",
                "log": str(self.log_path)}


class _Forker:
    """A thread that runs what it is given and lives until closed (the parent of every process it forks)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="perfkit-forker")
        self._lock = threading.Lock()

    def run(self, fn):
        with self._lock:
            return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
