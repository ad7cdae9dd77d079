"""The driver's side of an agent: the controller interface of a local server, answered on the server's host.

Studies and the fleet ask :class:`AgentControl` what they ask any ``ServerControl``; the answers come from the
agent on that host with their times put on the run's clock (the node's measured offset), and a question the
agent can't answer raises ``Unknown`` with its reason, as locally. Which questions are asked, and how they cross
the wire, is ``perfkit.cluster.remote``'s list; here is only what the driver adds to an answer (its clock, its
host) and what it answers without asking.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping

from perfkit.cluster.clock import ClockOffset
from perfkit.cluster.remote import AgentProxy
from perfkit.core.errors import PerfkitError
from perfkit.servers.control.base import Device, RestartInfo, SettingCheck, Unknown

CLOCK_MAX_AGE_S = 60.0


class AgentLogSource:
    """The server's log on the agent's host, read through the agent (a ``LogSource``)."""

    def __init__(self, control: "AgentControl"):
        self.control = control

    def mark(self):
        return self.control.log_mark()

    def read_since(self, mark) -> list[str]:
        return self.control.log_read_since(mark)

    def describe(self) -> str:
        return self.control.log_describe() or f"the server log on host {self.control.host}"


class AgentControl(AgentProxy):
    """Args:
        host: the node's perfkit name.
        actor: the agent (a Ray actor handle).
        clock: the node's clock offset.
        timeout_s: how long one question may take (a restart waits for the server).
    """

    name = "agent"
    is_local = False

    def __init__(self, host: str, actor, clock: ClockOffset, *, described: dict[str, Any],
                 node: dict[str, Any] | None = None, timeout_s: float = 900.0):
        self.host, self.actor, self.clock = host, actor, clock
        self._clock_at = time.monotonic()
        self.described, self.node = described, dict(node or {})
        self.timeout_s = timeout_s
        self._log = AgentLogSource(self) if described.get("log") else None  # the agent was given one, or kept it
        self.lost: str | None = None  # why the agent is gone, once it is

    def fresh_clock(self, max_age_s: float = CLOCK_MAX_AGE_S) -> ClockOffset:
        """The node's clock offset, measured again when older than ``max_age_s`` (two hosts' clocks drift apart by
        microseconds a second; a run lasts hours)."""
        if time.monotonic() - self._clock_at > max_age_s and not self.lost:
            import ray

            from perfkit.cluster.clock import measure_offset

            try:
                self.clock = measure_offset(self.host, lambda: ray.get(self.actor.clock.remote(), timeout=30),
                                            self.clock.round_trips)
                self._clock_at = time.monotonic()
            except Exception:  # noqa: BLE001 - the last offset stays; a lost agent is found by the next call
                pass
        return self.clock

    def send(self, name: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """One question to the agent over Ray; a dead agent makes the host lost, and every later question Unknown."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self.lost:
            raise Unknown(f"host {self.host} is lost ({self.lost})")
        try:
            return ray.get(self.actor.call.remote(name, kwargs), timeout=self.timeout_s)
        except RayActorError as e:
            self.lost = f"its agent died: {str(e).splitlines()[0][:200]}"
            raise Unknown(f"host {self.host} is lost ({self.lost})") from None
        except GetTimeoutError:
            raise PerfkitError(f"host {self.host}: the agent did not answer {name} within {self.timeout_s:g} s") \
                from None

    # ---- the remote answers, put on the run's clock and named by their host ----------------------------
    def can_restart(self) -> bool:
        try:
            return bool(super().can_restart())
        except Unknown:
            return False

    def restart(self, settings: Mapping[str, Any] | None) -> RestartInfo:
        return self._on_run_clock(super().restart(settings))

    def settings_in_effect(self, wanted: Mapping[str, Any], model: str | None = None) -> dict[str, SettingCheck]:
        return {k: replace(v, evidence=f"{v.evidence} (on host {self.host})")
                for k, v in super().settings_in_effect(wanted, model).items()}

    def read_bandwidth(self, model: str) -> dict[str, Any]:
        return {**super().read_bandwidth(model), "host": self.host}

    def device(self, model: str, backend=None) -> Device:
        try:
            return super().device(model, backend)
        except Unknown as e:
            return Device("unknown", unknown_because=str(e))

    def can_kill(self) -> bool:
        try:
            return bool(super().can_kill())
        except Unknown:
            return False

    def kill(self) -> int:
        """SIGKILL the server on its host, as a crash would; when, on the run's clock (ns)."""
        return self.fresh_clock().to_run(super().kill())

    def revive(self) -> RestartInfo:
        return self._on_run_clock(super().revive())

    def _on_run_clock(self, info: RestartInfo) -> RestartInfo:
        clock = self.fresh_clock()
        return replace(info, t_restart_ns=clock.to_run(info.t_restart_ns), t_ready_ns=clock.to_run(info.t_ready_ns),
                       wall_restart_unix_s=info.wall_restart_unix_s - clock.wall_offset_s)

    # ---- answered here, not asked ----------------------------------------------------------------------
    def server_pids(self) -> list[int]:
        return []  # the pids are the host's: its agent samples them

    def log_source(self):
        return self._log

    def why_not_local(self) -> str:
        return f"the server is on host {self.host}, seen through its agent"

    def restore(self) -> RestartInfo | None:
        return None  # the agent gives a user's server its settings back when it shuts down (Cluster.release)

    def recover(self) -> RestartInfo | None:
        return None  # done by the agent when it opened the server (``described["recovered"]``)

    def close(self) -> None:
        pass  # the agent and its server end with Cluster.release

    def view(self, interval_s: float, gpu: bool = True) -> "AgentView":
        """The host's own samples of its server (process tree, GPUs), taken there."""
        return AgentView(self, interval_s, gpu)

    def describe(self) -> dict[str, Any]:
        return {"control": self.name, "local": False, "host": self.host, "clock": self.clock.as_dict(),
                "node": {k: v for k, v in self.node.items() if k != "clock"}, "server": self.described}


class AgentView:
    """A server host's own samples, on the run's clock (the agent samples the server's process tree and GPUs)."""

    def __init__(self, control: AgentControl, interval_s: float, gpu: bool = True):
        import ray

        self.control, self.host = control, control.host
        self._cursor = 0
        self.interval_s = interval_s
        self.server_gpus: list[int] = []  # the host's GPUs that hold the server (its other GPUs are not its energy)
        self.unavailable: dict[str, str] = ray.get(control.actor.start_sampling.remote(interval_s, gpu),
                                                   timeout=control.timeout_s)

    def drain(self) -> list[dict[str, Any]]:
        """Samples taken since the last drain, each stamped on the run's clock and named by its host; [] once the
        host is lost (``control.lost`` says why)."""
        import ray
        from ray.exceptions import RayActorError

        if self.control.lost:
            return []
        try:
            rows, self._cursor, self.server_gpus = ray.get(self.control.actor.samples.remote(self._cursor), timeout=60)
        except RayActorError as e:
            self.control.lost = f"its agent died: {str(e).splitlines()[0][:200]}"
            return []
        clock = self.control.fresh_clock()
        for r in rows:
            r["t_ns"] = clock.to_run(r["t_ns"])
            r["host"] = self.host
        return rows

    @property
    def lost(self) -> str | None:
        """Why the host's agent is gone (its samples end there), or None."""
        return self.control.lost

    def stop(self) -> None:
        """Nothing here: the agent's sampling ends with the agent (``Cluster.close``)."""
