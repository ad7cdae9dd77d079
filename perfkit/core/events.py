"""Every event a run store records, declared once: one dataclass per kind, registered by its kind name.

An event is a row of ``events.jsonl``: ``{"kind": <KIND>, <field>: <value>, ...}``, the shape runs have always
had, so a run written before these classes reads as before. Writing goes through a class
(``store.emit(SeriesDone(...))``), or through ``store.event(kind, **fields)``, which looks the kind up here and
refuses one that is not declared, or a field its class does not have: a typo fails where it is written, not as
an empty table in a report months later. A field left ``None`` is not written (the row has no such column, as
before: "not known here").

Reading back is by class, never by a string: ``events_of(frame, SeriesDone)`` (rows of that kind, every declared
column present) and ``last_of(frame, DeviceFound)`` (the latest row as a dict, missing values left out). Passing
anything but a registered class raises, so a misspelt kind is an error rather than an empty result.

Some payloads belong to records declared elsewhere, whose names depend on what was measured (a window's
per-source means, the client's self-check): such a class declares one *spread* field whose keys become columns
of the row, with a prefix where the record has one (``client_``), or as the row's remaining columns (no prefix).

Units are in the field names (``_s``, ``_ns``, ``_bytes``, ``_rps``, ``_w``); a field from an earlier run that had
none is renamed when it is read (:mod:`perfkit.core.formats`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Mapping, TypeVar

import pandas as pd

# Each row is written with the store's format version (perfkit.core.formats.FORMAT): a declaration here that
# changes so that an older row must be upgraded to read (a field renamed, a unit changed) moves that version and
# adds the upgrade step there.
SPREAD = "spread"  # field metadata: the prefix of the row columns this dict field's keys become

E = TypeVar("E", bound="Event")


class EventError(ValueError):
    """An event kind that is not declared, or a field its class does not have (or lacks)."""


def spread(prefix: str = "") -> Any:
    """A dict field whose keys become columns of the row (``prefix + key``); with no prefix, every column the
    class does not declare (at most one such field per class)."""
    return field(default_factory=dict, metadata={SPREAD: prefix})


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event: ``KIND`` is its name on disk."""

    KIND: ClassVar[str] = ""

    def row(self) -> dict[str, Any]:
        """The row written to ``events.jsonl``: the kind, then every field that has a value."""
        out: dict[str, Any] = {"kind": self.KIND}
        for f in fields(self):
            v = getattr(self, f.name)
            if SPREAD in f.metadata:
                for k, x in v.items():
                    col = f.metadata[SPREAD] + str(k)
                    if col in out or col in self.columns():
                        raise EventError(f"{self.KIND}: {f.name}[{k!r}] would overwrite the column {col!r}")
                    if x is not None:
                        out[col] = x
            elif v is not None:
                out[f.name] = v
        return out

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The columns this kind always declares (spread fields' columns depend on the row)."""
        return tuple(f.name for f in fields(cls) if SPREAD not in f.metadata)

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)

    @classmethod
    def from_fields(cls: type[E], data: Mapping[str, Any]) -> E:
        """This event from a row's columns (``store.event(kind, **data)``): each declared name to its field,
        the others into the spread field whose prefix they carry. EventError naming the kind for a column it
        has no place for, or a required field missing."""
        named = set(cls.columns())
        spreads = sorted(((f.name, f.metadata[SPREAD]) for f in fields(cls) if SPREAD in f.metadata),
                         key=lambda s: -len(s[1]))
        kw: dict[str, Any] = {name: {} for name, _ in spreads}
        for k, v in data.items():
            if k in named:
                kw[k] = v
                continue
            where = next((name for name, prefix in spreads if k.startswith(prefix)), None)
            if where is None or k == "kind":
                raise EventError(f"a {cls.KIND!r} event has no field {k!r}; it declares: "
                                 f"{', '.join(cls.columns())} ({cls.__module__}.{cls.__name__})")
            prefix = dict(spreads)[where]
            kw[where][k[len(prefix):]] = v
        missing = [k for k in cls.required() if k not in kw]
        if missing:
            raise EventError(f"a {cls.KIND!r} event needs {', '.join(missing)} ({cls.__module__}.{cls.__name__})")
        return cls(**kw)


EVENTS: dict[str, type[Event]] = {}  # kind → its class: every kind a run store may hold


def register(cls: type[E]) -> type[E]:
    """Declare an event class under its ``KIND`` (once: a second class for a kind is a mistake)."""
    if not cls.KIND:
        raise EventError(f"{cls.__name__} has no KIND")
    if EVENTS.get(cls.KIND, cls) is not cls:
        raise EventError(f"event kind {cls.KIND!r} is declared twice: {EVENTS[cls.KIND].__name__} and {cls.__name__}")
    if "kind" in cls.columns():
        raise EventError(f"{cls.__name__}: 'kind' is the row's own key, not a field")
    EVENTS[cls.KIND] = cls
    return cls


def event_class(kind: str) -> type[Event]:
    """The class declared for ``kind``; EventError (with the kinds there are) when there is none."""
    try:
        return EVENTS[kind]
    except KeyError:
        raise EventError(f"no event kind {kind!r} is declared in perfkit.core.events; declared: "
                         f"{', '.join(sorted(EVENTS))}") from None


def validate(kind: str, data: Mapping[str, Any]) -> Event:
    """The event a ``kind`` and its columns make, checked against its declaration."""
    return event_class(kind).from_fields(data)


# ---- reading back ------------------------------------------------------------------------------------
def _check(classes: tuple[type[Event], ...]) -> None:
    for c in classes:
        if not (isinstance(c, type) and issubclass(c, Event) and EVENTS.get(c.KIND) is c):
            raise EventError(f"{c!r} is not a declared event class (perfkit.core.events); a kind is asked for by "
                             "its class, never by a string")


def events_of(events: pd.DataFrame, *classes: type[Event]) -> pd.DataFrame:
    """The rows of ``events`` (``RunStore.events()``) of these kinds, in order, with every column the classes
    declare (empty where a row has no value): an analysis meets missing values, never a missing column."""
    _check(classes)
    cols = list(dict.fromkeys(["kind", *(c for cls in classes for c in cls.columns())]))
    if events.empty or "kind" not in events:
        return pd.DataFrame(columns=cols)
    got = events[events["kind"].isin([c.KIND for c in classes])]
    return got.reindex(columns=list(got.columns) + [c for c in cols if c not in got.columns])


def any_of(events: pd.DataFrame, cls: type[Event]) -> bool:
    """Whether ``events`` holds one of this kind."""
    return len(events_of(events, cls)) > 0


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def records_of(events: pd.DataFrame, cls: type[Event]) -> list[dict[str, Any]]:
    """The rows of this kind, in order, each a dict without its missing values (``.get`` then says None)."""
    return [{k: v for k, v in r.items() if not _missing(v)} for r in events_of(events, cls).to_dict("records")]


def last_of(events: pd.DataFrame, cls: type[Event]) -> dict[str, Any] | None:
    """The latest row of this kind as a dict without its missing values (a resumed run's newer record
    wins), or None when there is none."""
    got = records_of(events, cls)
    return got[-1] if got else None


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


# ---- cold start ----------------------------------------------------------------------------------------------
@register
@dataclass(frozen=True, kw_only=True)
class StateSkipped(Event):
    """When a cache state can't be made on this server (cold_server needs a restart perfkit can do)."""

    KIND: ClassVar[str] = "state_skipped"
    state: str
    why: str


@register
@dataclass(frozen=True, kw_only=True)
class ReadBandwidth(Event):
    """Once per cold-start study: how fast the server host's disk reads the model file from a cold page cache
    (the load floor), or why that is unknown."""

    KIND: ClassVar[str] = "read_bandwidth"
    path: str | None = None
    bytes_s: float | None = None  # bytes per second
    read_s: float | None = None  # "seconds" in runs of store format 1
    size_bytes: int | None = None
    host: str | None = None  # a server on a cluster node
    unknown_because: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class SchemeASkipped(Event):
    """When the cold-start study can't restart the server for scheme A (restart, preload at start)."""

    KIND: ClassVar[str] = "scheme_a_skipped"
    why: str


# ---- workload and config tuning ------------------------------------------------------------------------------
@register
@dataclass(frozen=True, kw_only=True)
class WorkloadUsed(Event):
    """Per setting of the workload study: the conversations file replayed (its digest), and what the server's
    API lets be counted."""

    KIND: ClassVar[str] = "workload"
    config_index: int
    config: str
    file: str
    file_sha256: str
    context_tokens: int | None = None
    load_seen_per_request: bool | None = None
    cached_tokens_counted: bool | None = None


@register
@dataclass(frozen=True, kw_only=True)
class SettingsConfirmed(Event):
    """Per setting measured (config tuning): whether each server setting took effect
    (``perfkit.servers.control.base.SettingCheck`` by name), and the slots the server then offers."""

    KIND: ClassVar[str] = "setting_check"
    config_index: int
    config: str
    checks: dict[str, Any]
    all_applied: bool | None = None
    total_slots: int | None = None
    n_ctx_per_slot: int | None = None
    error: str | None = None  # the server could not serve the model with these settings


@register
@dataclass(frozen=True, kw_only=True)
class RateExtended(Event):
    """When config tuning measures an open-loop rate again, longer, because its verdict was unclear."""

    KIND: ClassVar[str] = "rate_extended"
    config_index: int
    rate_rps: float
    requests: int
    look: int


@register
@dataclass(frozen=True, kw_only=True)
class AutoRateStep(Event):
    """When config tuning's rate search picks its next open-loop rate (from the stored trials)."""

    KIND: ClassVar[str] = "auto_rate_search"
    config_index: int
    rate_rps: float
    step: int


@register
@dataclass(frozen=True, kw_only=True)
class AutoRates(Event):
    """Once per setting with ``rates_rps: auto``: the open-loop rates chosen as shares of the closed loop's
    capacity at ``clients`` clients (a resumed run sweeps the same), or why none."""

    KIND: ClassVar[str] = "auto_rates"
    config_index: int
    rates_rps: list[float]
    capacity_rps: float | None = None
    clients: int | None = None
    why: str | None = None


# ---- tune ----------------------------------------------------------------------------------------------------
@register
@dataclass(frozen=True, kw_only=True)
class TuningSpace(Event):
    """When tune starts searching: the settings space (name → values or range)."""

    KIND: ClassVar[str] = "tuning_space"
    space: dict[str, Any]


@register
@dataclass(frozen=True, kw_only=True)
class TuningCandidate(Event):
    """Per candidate measured (its check, at which look), or merged into an equal one already tried."""

    KIND: ClassVar[str] = "tuning_candidate"
    key: str
    settings: dict[str, Any]
    look: int | None = None
    effective: dict[str, Any] | None = None
    all_applied: bool | None = None
    checks: dict[str, Any] | None = None
    error: str | None = None
    merged_into: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class TuningSearchStopped(Event):
    """When tune's search stops before its last candidate (its budget spent)."""

    KIND: ClassVar[str] = "tuning_search_stopped"
    why: str
    candidates: int


@register
@dataclass(frozen=True, kw_only=True)
class TuningLook(Event):
    """After each look of tune's race: the candidates still in it and those dropped."""

    KIND: ClassVar[str] = "tuning_look"
    look: int
    survivors: list[str]
    dropped: list[str]


@register
@dataclass(frozen=True, kw_only=True)
class TuningDone(Event):
    """When tune's race ends: why, and the winner (None: no candidate beat the rest)."""

    KIND: ClassVar[str] = "tuning_done"
    stopped: str
    winner: str | None = None


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
