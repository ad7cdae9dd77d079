"""perfkit's agent on a server host: a Ray actor placed on the node that joined as ``perfkit-host:NAME``.

It runs on the server's own host, so it sees what perfkit sees of a local server — processes and their
sampling, settings in effect and their evidence, the log, the model file and the page cache, the device —
and does what perfkit does to one: restart it with settings, and (a server it started itself) kill and revive
it. The driver talks to it through :class:`perfkit.cluster.control.AgentControl`, the same controller
interface a local server has. Everything it returns is plain data stamped on the host's own clocks; the
driver puts it on the run's clock.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import threading
from collections import deque
import time
from pathlib import Path
from typing import Any

from perfkit.cluster.remote import METHODS, AgentExtras, RemoteMethod, serve
from perfkit.core import host
from perfkit.core.children import identity, owner_alive
from perfkit.core.clock import now_ns
from perfkit.core.errors import PerfkitError
from perfkit.servers.serverlog import source_of
from perfkit.servers.control.base import Killable, RestartInfo, Unknown

RESOURCE_HOST = "perfkit-host:"  # a server host's node joins with {"perfkit-host:NAME": 1}
RESOURCE_CLIENT = "perfkit-client:"  # a client node joins with {"perfkit-client:NAME": 1}
OUTBOX_MAX = 200_000  # sample rows an agent holds for the driver: ~3 h at 10 Hz of two samplers


def node_facts(name: str) -> dict[str, Any]:
    """Who answers: the node's perfkit (the driver refuses another version), Python, Ray and host."""
    import ray

    return {"node": name, "perfkit_version": host.versions().get("perfkit"), "python": platform.python_version(),
            "ray": ray.__version__, "hostname": platform.node(), "pid": os.getpid(), "cores": os.cpu_count()}


class HostAgent(AgentExtras):
    """The agent's state on its host: one server (``open_server``), its sampler and its log.

    ``methods``: the questions ``call`` answers (the driver's proxy is built from the same list).
    """

    methods: tuple[RemoteMethod, ...] = METHODS

    def __init__(self, name: str):
        self.name = name
        _remove_stale_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=f"perfkit-agent-{name}-"))
        (self.dir / "owner.json").write_text(json.dumps(identity()))
        self.control = None
        self.backend = None
        self.samplers: list = []
        self.recovered: dict[str, Any] | None = None  # a dead run's settings undone when the server was opened
        self._outbox: deque = deque(maxlen=OUTBOX_MAX)  # (number, sample row), until the driver has it
        self._seq = 0
        self.dropped = 0  # rows the outbox had to drop (a driver that stopped asking)
        self._lock = threading.Lock()

    # ---- who and when --------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return node_facts(self.name)

    def clock(self) -> tuple[int, int]:
        return now_ns(), time.time_ns()

    def host_info(self) -> dict[str, Any]:
        return host.info()

    # ---- the server ----------------------------------------------------------------------------------
    def open_server(self, spec: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
        """Start the server (``command``: the agent owns it) or find a user's by its port (``restart_command`` or
        none), applying ``settings`` where it can restart it. Returns its description."""
        from perfkit import kinds

        if not spec.get("kind"):
            raise PerfkitError(f"host {self.name}: the server's spec names no kind (its 'kind', as backend.kind "
                               f"names one: {', '.join(k for k in kinds.names() if kinds.get(k).agent_driven)})")
        kind = kinds.get(spec["kind"])
        ctl, self.backend, recovered = kind.open_on_host(spec, settings, log_path=self.dir / "server.log",
                                                         log=source_of(spec.get("server_log")),
                                                         where=f"host {self.name} ({platform.node()})")
        self.control = ctl
        if recovered is not None:
            self.recovered = recovered.as_dict()
        return {**ctl.describe(), **({"recovered": self.recovered} if self.recovered else {})}

    def call(self, method: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """One remote question (``perfkit.cluster.remote.METHODS``): ("ok", the answer as plain data) or the
        status and message of the ``Unknown`` that stopped it."""
        if self.control is None:
            return "unknown", f"host {self.name}: no server opened"
        return serve(self.methods, method, kwargs, answerers=(self.control, self),
                     host_objects={"backend": self.backend})

    # ---- what the agent answers itself (AgentExtras) --------------------------------------------------
    def log_mark(self) -> Any:
        log = self.control.log_source()
        if log is None:
            raise Unknown(f"no server log on host {self.name} (hosts[].server_log)")
        return log.mark()

    def log_read_since(self, mark: Any) -> list[str]:
        return list(self.control.log_source().read_since(mark))

    def log_describe(self) -> str | None:
        log = self.control.log_source()
        return f"{log.describe()} on host {self.name}" if log else None

    def can_kill(self) -> bool:
        return isinstance(self.control, Killable) and self.control.can_kill()

    def kill(self) -> int:
        if not self.can_kill():
            raise Unknown(f"perfkit does not kill a server it did not start (host {self.name}: give hosts[].command "
                          "to have the agent start and own it)")
        return self.control.kill()

    def revive(self) -> RestartInfo:
        return self.control.revive() if isinstance(self.control, Killable) else self.control.restart(None)

    # ---- sampling ------------------------------------------------------------------------------------
    def start_sampling(self, interval_s: float, gpu: bool = True) -> dict[str, str]:
        """The server's process tree (CPU, memory, reads) and, where NVML sees GPUs, the GPUs, sampled on this host.
        Returns what can't be sampled, and why."""
        from perfkit.sampling.gpu import GpuSampler
        from perfkit.sampling.system import SystemSampler

        with self._lock:
            if self.samplers:
                return self._unavailable()
            self.samplers = [SystemSampler(interval_s, root_pids=self.control.server_pids)]
            if gpu:
                self.samplers.append(GpuSampler(interval_s, pids=self.control.server_pids))
            for s in self.samplers:
                s.keep_samples = False  # the driver keeps them; here they wait in the outbox until acknowledged
                s.start()
            return self._unavailable()

    def _unavailable(self) -> dict[str, str]:
        return {k: v for s in self.samplers for k, v in s.unavailable.items()}

    def samples(self, since: int = 0) -> tuple[list[dict[str, Any]], int, list[int]]:
        """Samples not yet acknowledged, on this host's perf_counter, and the GPUs the server's processes have held
        memory on (NVML's view: the server's GPUs, not the host's others).

        Each sampler's new rows are drained into one outbox, numbered in the order taken; ``since`` is the number
        the driver last received (returned as the cursor), so rows it has are dropped and rows of an answer that
        never arrived are sent again. The outbox is bounded (``OUTBOX_MAX`` rows, the oldest dropped and counted)."""
        with self._lock:
            for s in self.samplers:
                for r in s.drain():
                    self._seq += 1
                    self.dropped += len(self._outbox) == self._outbox.maxlen
                    self._outbox.append((self._seq, r))
            while self._outbox and self._outbox[0][0] <= since:
                self._outbox.popleft()
            rows = sorted((r for _, r in self._outbox), key=lambda r: r["t_ns"])
            cursor = self._outbox[-1][0] if self._outbox else max(since, self._seq)
        gpus = sorted(set().union(*(getattr(s, "server_gpus", set()) for s in self.samplers)))
        return rows, cursor, gpus

    # ---- the end -------------------------------------------------------------------------------------
    def shutdown(self) -> dict[str, Any]:
        """Stop sampling; a server the agent started is stopped, a user's gets its own settings back."""
        out: dict[str, Any] = {}
        for s in self.samplers:
            s.stop()
        if self.dropped:
            out["samples_dropped"] = self.dropped
        if self.control is not None:
            try:
                info = self.control.restore()
                out["restored"] = info.as_dict() if info else None
            except Exception as e:  # noqa: BLE001 - said, and the rest still stops
                out["restore_failed"] = str(e)
            self.control.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.backend is not None:
            self.backend.close()
        return out


def _remove_stale_dirs() -> None:
    """The temp directories of agents that died without their shutdown (a killed actor, a lost node) on this host."""
    for d in Path(tempfile.gettempdir()).glob("perfkit-agent-*"):
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None and time.time() - d.stat().st_mtime < 60:
            continue  # being created right now
        if not owner_alive(owner):
            shutil.rmtree(d, ignore_errors=True)
