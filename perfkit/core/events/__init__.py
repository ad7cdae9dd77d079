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

from perfkit.core.events.base import (EVENTS, SPREAD, Event, EventError, any_of, event_class, events_of, last_of,
                                      records_of, register, spread, validate)
from perfkit.core.events.measuring import (ClockAnchor, ServerRestarted, ServerRecovered, ServerRestored,
                                           RestoreFailed, AgentClosed, PrefixCacheEmptied, ServerLogKept,
                                           DeviceFound, IdleBaseline, Resumed, SeriesStarted, PrimeFailed,
                                           ClientLost, SeriesDone, SeriesResources, SeriesRecovered, LooksTaken)
from perfkit.core.events.studies import (StateSkipped, ReadBandwidth, SchemeASkipped, WorkloadUsed,
                                         SettingsConfirmed, RateExtended, AutoRateStep, AutoRates, TuningSpace,
                                         TuningCandidate, TuningSearchStopped, TuningLook, TuningDone)
from perfkit.core.events.fleet import (PhaseStarted, PhaseDone, PhaseSkipped, HostLost, HostLogKept, ServerUnloaded,
                                       FleetSettingCheck, ColdDiskUnknown, ServerKilled, ServerRevived, ShortTimeout,
                                       ProxyCacheOn, ModelChanged, ProxyReloaded, FleetServerKilled,
                                       FleetServerRevived, FleetModelSwapped)

__all__ = ["EVENTS", "SPREAD", "Event", "EventError", "any_of", "event_class", "events_of", "last_of", "records_of",
           "register", "spread", "validate", "ClockAnchor", "ServerRestarted", "ServerRecovered", "ServerRestored",
           "RestoreFailed", "AgentClosed", "PrefixCacheEmptied", "ServerLogKept", "DeviceFound", "IdleBaseline",
           "Resumed", "SeriesStarted", "PrimeFailed", "ClientLost", "SeriesDone", "SeriesResources",
           "SeriesRecovered", "LooksTaken", "StateSkipped", "ReadBandwidth", "SchemeASkipped", "WorkloadUsed",
           "SettingsConfirmed", "RateExtended", "AutoRateStep", "AutoRates", "TuningSpace", "TuningCandidate",
           "TuningSearchStopped", "TuningLook", "TuningDone", "PhaseStarted", "PhaseDone", "PhaseSkipped",
           "HostLost", "HostLogKept", "ServerUnloaded", "FleetSettingCheck", "ColdDiskUnknown", "ServerKilled",
           "ServerRevived", "ShortTimeout", "ProxyCacheOn", "ModelChanged", "ProxyReloaded", "FleetServerKilled",
           "FleetServerRevived", "FleetModelSwapped"]
