"""Every event kind perfkit writes is declared once (perfkit.core.events); writing an undeclared kind or field
fails where it is written; reading is by class, so a misspelt kind is an error, not an empty table."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from perfkit.core import events as E, formats
from perfkit.core.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


def _sources():
    for p in sorted((ROOT / "perfkit").rglob("*.py")):
        yield str(p.relative_to(ROOT)), p.read_text()


def test_every_kind_perfkit_writes_by_name_is_declared():
    written = set()
    for rel, text in _sources():
        written |= set(re.findall(r"""\.event\(\s*["'](\w+)["']""", text))
        if rel == "perfkit/servers/fleet.py":  # the fleet's own events reach the store as fleet_<kind>
            written |= {f"fleet_{k}" for k in re.findall(r"""self\._event\(\s*["'](\w+)["']""", text)}
    assert written and written <= set(E.EVENTS), sorted(written - set(E.EVENTS))


def test_no_reader_filters_store_events_by_a_string():
    offenders = []
    for rel, text in _sources():
        if rel.startswith("perfkit/core/events/"):
            continue
        for kind in re.findall(r"""kind["']?\]?\s*[=!]=\s*["'](\w+)["']""", text):
            if kind in E.EVENTS:
                offenders.append(f"{rel}: == {kind!r}")
    assert offenders == []


def test_each_event_class_says_when_it_is_written_and_types_its_fields():
    for kind, cls in E.EVENTS.items():
        assert cls.KIND == kind and (cls.__doc__ or "").strip(), cls
        for f in dataclasses.fields(cls):
            assert f.type not in ("Any", dataclasses.MISSING), (cls, f.name)


def test_an_undeclared_kind_or_field_is_refused_where_it_is_written(tmp_path):
    s = RunStore(tmp_path)
    with pytest.raises(E.EventError, match="no event kind 'restrat'"):
        s.event("restrat", settings={})
    with pytest.raises(E.EventError, match="a 'resume' event has no field 'skiped'"):
        s.event("resume", skiped=1)
    with pytest.raises(E.EventError, match="a 'series_done' event needs t_start_ns, t_end_ns"):
        s.event("series_done", series="c1", attempt=0)
    assert not (tmp_path / "events.jsonl").exists()  # nothing half-written


def test_reading_asks_for_a_class_never_a_string():
    with pytest.raises(E.EventError, match="is not a declared event class"):
        E.events_of(pd.DataFrame([{"kind": "restart"}]), "restart")


def test_rows_keep_their_shape_and_read_back_by_class(tmp_path):
    s = RunStore(tmp_path)
    s.emit(E.SeriesDone(series="c1", attempt=0, t_start_ns=1, t_end_ns=2, steady=True, steady_s=0.5,
                        client={"loop_busy": 0.1, "client_bound": False}))
    s.event("series_done", series="c2", attempt=1, t_start_ns=3, t_end_ns=4, client_loop_busy=0.2)
    s.emit(E.SeriesResources.from_fields({"series": "c1", "attempt": 0, "t_start_ns": 1, "t_end_ns": 2,
                                          "duration_s": 1e-9, "gpu0_power_w_mean": 300.0, "energy_j": None}))
    rows = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert rows[0] == {formats.ROW_KEY: formats.FORMAT, "kind": "series_done", "series": "c1", "attempt": 0,
                       "t_start_ns": 1, "t_end_ns": 2, "steady": True, "steady_s": 0.5, "client_loop_busy": 0.1,
                       "client_client_bound": False}  # no null for a field not known: as before
    assert "energy_j" not in rows[2] and rows[2]["gpu0_power_w_mean"] == 300.0
    ev = s.events()
    done = E.events_of(ev, E.SeriesDone)
    assert list(done["series"]) == ["c1", "c2"] and list(done["client_loop_busy"]) == [0.1, 0.2]
    assert done["achieved_rate_rps"].isna().all()  # declared, never written: a column of missing values
    assert E.last_of(ev, E.SeriesResources)["gpu0_power_w_mean"] == 300.0
    assert E.last_of(ev, E.DeviceFound) is None and not E.any_of(ev, E.DeviceFound)
    assert list(E.events_of(pd.DataFrame(), E.Resumed).columns) == ["kind", "skipped", "desc"]


def test_a_kind_is_declared_once():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Again(E.Event):
        """Never written."""

        KIND = "restart"

    with pytest.raises(E.EventError, match="declared twice"):
        E.register(Again)
