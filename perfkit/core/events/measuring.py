"""The events of a measuring session and its runner: the server started, restarted, given back; devices; series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from perfkit.core.events.base import Event, register, spread


# ---- the server and its session (perfkit.measure.session, perfkit.measure.devices) --------------------------
@register
@dataclass(frozen=True, kw_only=True)
class ClockAnchor(Event):
    """When a session starts measuring (and when the fleet study starts): the wall clock and the run's
    monotonic clock read together, so a server log's wall times can be put on the run's clock."""

    KIND: ClassVar[str] = "clock"
    wall_unix_s: float
    t_ns: int


@dataclass(frozen=True, kw_only=True)
class _RestartTimes(Event):
    """One restart (``perfkit.servers.control.base.RestartInfo``): asked for at ``t_restart_ns``, the new server
    answering at ``t_ready_ns`` (the run's clock)."""

    t_restart_ns: int
    t_ready_ns: int
    wall_restart_unix_s: float
    pid_before: int | None = None
    pid_after: int | None = None
    ready_s: float | None = None


@register
@dataclass(frozen=True, kw_only=True)
class ServerRestarted(_RestartTimes):
    """When a session restarts the server with other settings (base settings + ``settings``), before
    measuring them."""

    KIND: ClassVar[str] = "restart"
    settings: dict[str, Any]


@register
@dataclass(frozen=True, kw_only=True)
class ServerRecovered(_RestartTimes):
    """When a session opens a user's server that a killed run left on its settings, and gives it the user's
    own back first."""

    KIND: ClassVar[str] = "server_recovered"


@register
@dataclass(frozen=True, kw_only=True)
class ServerRestored(_RestartTimes):
    """When a session ends and the user's server gets its own settings back."""

    KIND: ClassVar[str] = "restore"


@register
@dataclass(frozen=True, kw_only=True)
class RestoreFailed(Event):
    """When giving the user's server its own settings back failed at the end of a session (the measured data
    is safe; ``error`` says what to do by hand)."""

    KIND: ClassVar[str] = "restore_failed"
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class AgentClosed(Event):
    """When a session or the fleet study releases a cluster agent on ``host``: what it did at the end."""

    KIND: ClassVar[str] = "agent_closed"
    host: str
    samples_dropped: int | None = None
    restored: dict[str, Any] | None = None  # the RestartInfo of the user's settings given back
    restore_failed: str | None = None
    shutdown_failed: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class PrefixCacheEmptied(Event):
    """When a session opens on a server whose controller can empty its prefix cache: what happened (``reset``, or
    why not), so no run measures what an earlier one cached."""

    KIND: ClassVar[str] = "prefix_cache_reset"
    result: str


@register
@dataclass(frozen=True, kw_only=True)
class ServerLogKept(Event):
    """When a session ends: whether the server's log of the session was kept as ``server.log`` (``lines``
    lines from ``source``), or why not; a log written on another host has its wall clock's offset."""

    KIND: ClassVar[str] = "server_log"
    available: bool
    why: str | None = None
    source: str | None = None
    lines: int | None = None
    wall_offset_s: float | None = None
    clock_uncertainty_s: float | None = None


@register
@dataclass(frozen=True, kw_only=True)
class DeviceFound(Event):
    """Once per model (a resumed run records only the missing ones): the hardware that runs it and the memory
    bandwidth that bounds its decode (``perfkit.servers.control.base.Device``), and its resident size."""

    KIND: ClassVar[str] = "device"
    model: str
    device: str = "unknown"  # cpu | gpu | gpu+cpu | unknown
    device_name: str | None = None
    memory_bandwidth_bytes_s: float | None = None
    bandwidth_source: str | None = None
    gpu_indices: list[int] | None = None
    cpu_share: float | None = None
    offload_evidence: str | None = None
    unknown_because: str | None = None
    model_memory_bytes: int | None = None
    model_vram_bytes: int | None = None


@register
@dataclass(frozen=True, kw_only=True)
class IdleBaseline(Event):
    """When a session measured the GPUs' idle power before any request (``sampling.idle_baseline_s``): each
    GPU's mean power (W), subtracted from energy figures."""

    KIND: ClassVar[str] = "idle_baseline"
    power_w: dict[int, float]
    duration_s: float  # "seconds" in runs of store format 1


# ---- the runner (perfkit.measure.runner, perfkit.measure.sequential) -----------------------------------------
@register
@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    """When a resumed run skips trials it already has: how many, of which group (``desc``)."""

    KIND: ClassVar[str] = "resume"
    skipped: int
    desc: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class SeriesStarted(Event):
    """When a load series' attempt starts (a series killed part way is re-run as the next attempt)."""

    KIND: ClassVar[str] = "series_start"
    series: str
    attempt: int
    mode: str  # closed | open
    concurrency: int | None = None
    users: int | None = None
    rate_rps: float | None = None
    arrivals: str | None = None
    seed: int | None = None
    burstiness: float | None = None
    workload: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class PrimeFailed(Event):
    """When the priming request before a series failed (the series still runs: its failures are the finding)."""

    KIND: ClassVar[str] = "prime_failed"
    series: str
    attempt: int
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class ClientLost(Event):
    """When a client node died during a series: the indexes of the requests it never sent (not failures)."""

    KIND: ClassVar[str] = "client_lost"
    series: str
    attempt: int
    because: str
    requests: list[int]


@register
@dataclass(frozen=True, kw_only=True)
class SeriesDone(Event):
    """When a series' attempt is stored: its span, its steady-state window (``perfkit.analysis.series.steady_window``)
    and the client's self-check (``perfkit.client.loadgen.SelfCheck``, each field as ``client_<name>``)."""

    KIND: ClassVar[str] = "series_done"
    series: str
    attempt: int
    t_start_ns: int
    t_end_ns: int
    conversations: int | None = None  # multi-turn sessions
    steady: bool = False
    steady_t0_ns: int | None = None
    steady_t1_ns: int | None = None
    steady_s: float | None = None
    n_steady: int | None = None
    achieved_concurrency: float | None = None
    achieved_rate_rps: float | None = None
    scheduled_rate_rps: float | None = None
    client: dict[str, Any] = spread("client_")


@register
@dataclass(frozen=True, kw_only=True)
class SeriesResources(Event):
    """After a series: what the GPUs, the server's host and the server's own metrics did over its whole window
    (``perfkit.sampling.monitor.Window``); ``stats`` holds each source's ``<metric>_mean`` / ``_max``,
    ``<counter>_delta`` and ``gpu<i>_<metric>``, whose names depend on the sources."""

    KIND: ClassVar[str] = "series_resources"
    series: str
    attempt: int
    t_start_ns: int
    t_end_ns: int
    duration_s: float
    energy_j: float | None = None
    energy_method: str | None = None
    energy_idle_subtracted_j: float | None = None
    server_read_bytes: int | None = None
    server_host_read_bytes: int | None = None
    n_samples: int = 0
    gpu_source: str | None = None
    server_gpus: str | None = None
    server_gpus_how: str | None = None
    unknown_because: str | None = None
    stats: dict[str, Any] = spread()


@register
@dataclass(frozen=True, kw_only=True)
class SeriesRecovered(Event):
    """When a re-run series first stores what its killed attempt measured (from its spool, flagged
    interrupted): ``n`` rows."""

    KIND: ClassVar[str] = "series_recovered"
    series: str
    attempt: int
    n: int


@register
@dataclass(frozen=True, kw_only=True)
class LooksTaken(Event):
    """When a question measured in planned looks (``perfkit.analysis.sequential``) stops: the repetitions at
    each look taken, those planned, and why it stopped (answered, budget, last look)."""

    KIND: ClassVar[str] = "sequential"
    name: str
    looks: list[int]
    planned: list[int]
    stopped: str
    confidence: float
    budget_s: float | None = None
