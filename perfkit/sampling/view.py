"""A server's own host seen from here: its process tree sampled on this machine (the fleet's engines). An agent's
host gives the same view from its node (``perfkit.cluster.AgentView``): ``drain()`` returns the samples taken
since the last call, on the run's clock and named by ``host``."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from perfkit.sampling._periodic import PeriodicSampler
from perfkit.sampling.system import SystemSampler


class LocalView:
    """Args:
        host: the server's name in the samples (``host`` column).
        root_pids: the server's root processes (their descendants are included).
        interval_s: seconds between samples.
    """

    def __init__(self, host: str, root_pids: Callable[[], Iterable[int]], interval_s: float):
        self.host = host
        self.unavailable: dict[str, str] = {}
        self._sampler = SystemSampler(interval_s, root_pids=root_pids)
        self._sampler.start()
        self._cursor = 0

    def drain(self) -> list[dict[str, Any]]:
        rows = list(self._sampler.samples[self._cursor:])
        self._cursor += len(rows)
        self.unavailable = dict(self._sampler.unavailable)
        return [{**r, "host": self.host} for r in rows]

    def stop(self) -> None:
        self._sampler.stop()


class ViewSampler(PeriodicSampler):
    """A host view (an agent's) as one of the monitor's samplers: every ``interval_s`` it takes the samples the
    host took since the last time, so windows, the store and the plots see the server's own host as they see
    this one's. Its process and host rows stay ``system`` (the monitor then runs no local system sampler); its
    GPU rows become this source's, limited to the GPUs that hold the server once the host has seen them, so a
    window's GPU figures and energy are that host's GPUs as a telemetry source's are."""

    source = "agent"

    def __init__(self, view, interval_s: float = 0.5):
        super().__init__(interval_s)
        self.view = view
        self.resolution_s = getattr(view, "interval_s", interval_s)  # the host samples this often

    def _sample(self, t_ns: int) -> list[dict[str, Any]]:
        rows = self.view.drain()
        self.unavailable.update(getattr(self.view, "unavailable", {}) or {})
        server_gpus = set(getattr(self.view, "server_gpus", []) or [])
        out = []
        for r in rows:
            if r.get("gpu") is not None:
                if server_gpus and int(r["gpu"]) not in server_gpus:
                    continue
                r = {**r, "source": self.source}
            out.append(r)
        return out

    def wait_past(self, t_ns: int, timeout_s: float = 5.0) -> None:
        """The host's samples reach past ``t_ns`` (they arrive a drain later than they were taken)."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.samples and self.samples[-1]["t_ns"] >= t_ns:
                    return
            time.sleep(0.02)

    def describe(self) -> list[dict[str, Any]]:
        host = getattr(self.view, "host", "?")
        return [{"source": self.source, "origin": f"psutil and NVML on host {host}, by perfkit's agent there",
                 "resolution_s": self.resolution_s, "host": host,
                 "server_gpus": list(getattr(self.view, "server_gpus", []) or [])}]
