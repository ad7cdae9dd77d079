"""The events the built-in studies write (cold start, workload, config tuning, tune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from perfkit.core.events.base import Event, register


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
