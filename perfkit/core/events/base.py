"""An event kind: a frozen dataclass registered by its kind name; writing validates against it, reading back is by
class (see the package's docstring)."""


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
