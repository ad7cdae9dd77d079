"""What the fleet study's analysis returns, typed: the fleet as its manifest recorded it, each phase's summary
with the unit in every field's name, and the tables the report shows (data frames, one row per series or server).

Nothing here is stored: every analysis reads these from what a run keeps on disk (trials, events, the manifest,
nginx's access log), so a run recorded before these types existed reads as it did."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from perfkit.analysis import stats
from perfkit.studies.base import StudyResult


@dataclass
class ServerSetup:
    """One upstream as the manifest recorded it."""

    url: str
    weight: int

    @property
    def address(self) -> str:
        """``host:port`` as the user wrote it: how the balance and cold-server tables name a server."""
        return self.url.split("://", 1)[-1].rstrip("/")


@dataclass
class FleetSetup:
    """The fleet as the manifest recorded it (``recorded``: the whole record, keys this view does not name too)."""

    managed: bool = False
    proxy_url: str | None = None
    proxy_version: str | None = None
    servers: list[ServerSetup] = field(default_factory=list)
    cores: int | None = None
    threads_per_server: int | None = None
    proxy_read_timeout_s: float | None = None
    recorded: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, d: Mapping[str, Any]) -> FleetSetup:
        # A run's manifest may lack any key (a user's fleet records no proxy version, an old run less): absent is None.
        return cls(managed=bool(d.get("managed")), proxy_url=d.get("proxy_url"), proxy_version=d.get("proxy_version"),
                   servers=[ServerSetup(s["url"], s["weight"]) for s in d.get("servers", [])], cores=d.get("cores"),
                   threads_per_server=d.get("threads_per_server"), proxy_read_timeout_s=d.get("proxy_read_timeout_s"),
                   recorded=dict(d))


@dataclass
class Failover:
    """What a killed server cost. ``kill_reached`` False: the series ended before the kill, so only ``requests``
    is known and the rest keeps its defaults."""

    requests: int
    kill_reached: bool = True
    ok: int = 0
    failed: int = 0
    failure_classes: dict[str, int] = field(default_factory=dict)
    victim: str = ""
    sent_after_kill: int = 0
    proxy_tries_on_dead_server: int = 0
    retried_elsewhere_ok: int = 0
    last_try_on_dead_server_s_after_kill: float = math.nan
    access_log_entries: int = 0


@dataclass
class TimeoutProbe:
    """One cold request through a proxy whose read timeout was set shorter than a cold start."""

    probe: str | None
    proxy_read_timeout_s: float | None
    http_status: Any
    outcome: str


@dataclass
class TimeoutAdvice:
    """The proxy_read_timeout the measured cold starts call for, and what it rests on."""

    cold_n: int
    cold_ttft_p50_text: str
    cold_ttft_max_s: float
    recommended_read_timeout_s: float
    basis: str


@dataclass
class TimeoutSummary:
    configured_read_timeout_s: float
    advice: TimeoutAdvice | None = None  # None: no cold start was measured
    probes: list[TimeoutProbe] = field(default_factory=list)


@dataclass
class CacheSeedCheck:
    """Two identical requests to the cache as a plain configuration writes it."""

    statuses: list[str]
    server_accel_buffering: str | None


@dataclass
class CacheHits:
    ttft_text: str
    e2e_text: str
    itl_p50_s: float


@dataclass
class CacheMisses:
    ttft_text: str
    e2e_text: str
    over_hit_e2e_text: str | None  # None: there was no hit to compare with


@dataclass
class SampledAnswers:
    """Sampled (temperature > 0) requests: how many different answers came from the server and through the cache."""

    n: int
    distinct_direct: int
    distinct_via_cache: int


@dataclass
class StaleAnswer:
    """The first request after the model behind the served name changed."""

    proxy_status: str | None
    proxy_answer_is_old_model: bool
    server_answer_changed: bool


@dataclass
class CacheSummary:
    requests: int
    status_counts: dict[str, int]
    status_header: bool  # whether the proxy said what its cache did (X-Cache-Status)
    hit_ratio: stats.Estimate
    options_differ_status: str | None = None
    seed: CacheSeedCheck | None = None
    hits: CacheHits | None = None
    misses: CacheMisses | None = None
    sampled: SampledAnswers | None = None
    stale: StaleAnswer | None = None


@dataclass
class SkippedPhase:
    phase: str
    why: str


@dataclass
class HostLost:
    server: str
    why: str


@dataclass
class AgentClosed:
    host: str
    restore_failed: str | None  # why the user's server did not get its own settings back, None when it did


@dataclass
class ClusterNode:
    """A cluster node and its clock's offset from the run's clock, as the manifest recorded them."""

    name: str
    role: str | None
    hostname: str | None
    perfkit_version: str | None
    clock_offset_ns: float
    clock_uncertainty_s: float
    clock_round_trips: int

    @classmethod
    def from_manifest(cls, name: str, d: Mapping[str, Any]) -> ClusterNode:
        c = d["clock"]
        return cls(name, d.get("role"), d.get("hostname"), d.get("perfkit_version"), c["offset_ns"],
                   c["uncertainty_s"], c["round_trips"])


@dataclass
class FleetResult(StudyResult):
    fleet: FleetSetup = field(default_factory=FleetSetup)
    scaling: pd.DataFrame = field(default_factory=pd.DataFrame)
    balance: pd.DataFrame = field(default_factory=pd.DataFrame)
    balance_source: str = ""
    overhead: pd.DataFrame = field(default_factory=pd.DataFrame)
    cold_upstream: pd.DataFrame = field(default_factory=pd.DataFrame)
    failover: Failover | None = None  # None: no failover phase recorded
    timeout: TimeoutSummary = field(default_factory=lambda: TimeoutSummary(math.nan))
    cache: CacheSummary | None = None  # None: no cache phase recorded
    skipped: list[SkippedPhase] = field(default_factory=list)
    clients: pd.DataFrame = field(default_factory=pd.DataFrame)
    hosts: pd.DataFrame = field(default_factory=pd.DataFrame)
    cold_disk: pd.DataFrame = field(default_factory=pd.DataFrame)
    timelines: dict[str, pd.DataFrame] = field(default_factory=dict)
    hosts_lost: list[HostLost] = field(default_factory=list)
    cluster_nodes: list[ClusterNode] = field(default_factory=list)
    settings: pd.DataFrame = field(default_factory=pd.DataFrame)  # per host: each setting confirmed or not
    agents_closed: list[AgentClosed] = field(default_factory=list)  # per host: what its agent did at the end
