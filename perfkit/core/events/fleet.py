"""The events of the fleet study and of the fleet it drives (every study row stamped with the wall and run clocks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from perfkit.core.events.base import Event, register, spread


# ---- fleet (perfkit.studies.fleet: every row stamped with the wall and run clocks) ----------------------------
@dataclass(frozen=True, kw_only=True)
class _FleetEvent(Event):
    wall_unix_s: float | None = None
    t_ns: int | None = None


@register
@dataclass(frozen=True, kw_only=True)
class PhaseStarted(_FleetEvent):
    """When a fleet phase starts (scaling, overhead, cold_upstream, cold_disk, failover, timeout, cache)."""

    KIND: ClassVar[str] = "phase_start"
    phase: str


@register
@dataclass(frozen=True, kw_only=True)
class PhaseDone(_FleetEvent):
    """When a fleet phase ends (a resumed run skips the phases done)."""

    KIND: ClassVar[str] = "phase_done"
    phase: str


@register
@dataclass(frozen=True, kw_only=True)
class PhaseSkipped(_FleetEvent):
    """When a fleet phase can't run on this fleet, and why."""

    KIND: ClassVar[str] = "phase_skipped"
    phase: str
    why: str


@register
@dataclass(frozen=True, kw_only=True)
class HostLost(_FleetEvent):
    """When a server host's sampling stops answering: its samples end at ``last_sample_t_ns``."""

    KIND: ClassVar[str] = "host_lost"
    server: str
    why: str
    last_sample_t_ns: int | None = None


@register
@dataclass(frozen=True, kw_only=True)
class HostLogKept(_FleetEvent):
    """At the fleet study's end, per server: its log kept as ``hosts/<dir>/server.log`` with its host's clock
    offset, or why not."""

    KIND: ClassVar[str] = "host_log"
    server: str
    available: bool
    why: str | None = None
    lines: int | None = None
    dir: str | None = None
    wall_offset_s: float | None = None
    clock_uncertainty_s: float | None = None


@register
@dataclass(frozen=True, kw_only=True)
class ServerUnloaded(_FleetEvent):
    """When the fleet study unloads the model from a server (a cold upstream behind the proxy)."""

    KIND: ClassVar[str] = "server_unloaded"
    server: str


@register
@dataclass(frozen=True, kw_only=True)
class FleetSettingCheck(_FleetEvent):
    """Per server and setting of a fleet on cluster hosts: whether it took effect
    (``perfkit.servers.control.base.SettingCheck``), or why that is unknown."""

    KIND: ClassVar[str] = "settings_check"
    server: str
    name: str | None = None
    wanted: str | None = None
    status: str | None = None
    effective: str | None = None
    evidence: str | None = None
    unknown_because: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class ColdDiskUnknown(_FleetEvent):
    """When a server's model file can't be evicted from its page cache (the cold-disk phase skips it)."""

    KIND: ClassVar[str] = "cold_disk_unknown"
    server: str
    why: str


@register
@dataclass(frozen=True, kw_only=True)
class ServerKilled(_FleetEvent):
    """When the failover phase kills a server mid-series (``kill_t_ns``, the run's clock)."""

    KIND: ClassVar[str] = "server_killed"
    server: str
    server_addrs: list[str] | None = None
    kill_t_ns: int | None = None
    scheduled_by: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class ServerRevived(_FleetEvent):
    """When the failover phase starts the killed server again."""

    KIND: ClassVar[str] = "server_revived"
    server: str


@register
@dataclass(frozen=True, kw_only=True)
class ShortTimeout(_FleetEvent):
    """When the timeout phase sets a proxy read timeout shorter than a cold request's first byte."""

    KIND: ClassVar[str] = "short_timeout"
    proxy_read_timeout_s: float
    probe: str | None = None
    cold_ttfb_s: float | None = None
    cold_ttft_s: float | None = None


@register
@dataclass(frozen=True, kw_only=True)
class ProxyCacheOn(_FleetEvent):
    """When the cache phase turns the proxy's response cache on (its key, validity, headers ignored)."""

    KIND: ClassVar[str] = "cache_on"
    key: str
    valid_s: float | None = None
    ignore: list[str] | None = None


@register
@dataclass(frozen=True, kw_only=True)
class ModelChanged(_FleetEvent):
    """When the cache phase puts another model file under the served name (a stale cached answer's test)."""

    KIND: ClassVar[str] = "model_changed"
    to: str


@register
@dataclass(frozen=True, kw_only=True)
class ProxyReloaded(Event):
    """When the fleet reloads nginx with changes to its config (``perfkit.servers.nginx.ProxyConfig`` fields,
    upstreams left out)."""

    KIND: ClassVar[str] = "fleet_proxy_reload"
    t_ns: int
    changes: dict[str, Any] = spread()


@register
@dataclass(frozen=True, kw_only=True)
class FleetServerKilled(Event):
    """When the fleet SIGKILLs a server it started (``t_ns``, the run's clock)."""

    KIND: ClassVar[str] = "fleet_server_killed"
    t_ns: int
    server: str


@register
@dataclass(frozen=True, kw_only=True)
class FleetServerRevived(Event):
    """When the fleet starts a killed server again on its port."""

    KIND: ClassVar[str] = "fleet_server_revived"
    t_ns: int
    server: str


@register
@dataclass(frozen=True, kw_only=True)
class FleetModelSwapped(Event):
    """When the fleet points the served model name at another file."""

    KIND: ClassVar[str] = "fleet_model_swapped"
    t_ns: int
    to: str
