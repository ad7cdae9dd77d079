"""Measure in planned looks until the question is answered, the last look is reached or the time budget is spent.

The plan and its statistics are :class:`perfkit.analysis.sequential.Looks`; this module only drives it and
records, per question, the looks taken and why measuring stopped (event ``sequential``), so the report says it
and a resumed run takes up where it stopped (what is recorded is never measured again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from perfkit.analysis.sequential import ANSWERED, BUDGET, LAST_LOOK, Looks
from perfkit.core.events import LooksTaken, events_of
from perfkit.core.store import RunStore


@dataclass
class Budget:
    """A study's time budget in seconds (``budget_s``; None: no limit), counted from its start."""

    budget_s: float | None
    t0_s: float = field(default_factory=time.monotonic)

    def left_s(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - (time.monotonic() - self.t0_s)


def measure_in_looks(store: RunStore, name: str, looks: Looks, measure_to: Callable[[int], None],
                     settled: Callable[[], bool], budget: Budget) -> str:
    """Measure ``looks.ns[0]`` repetitions, then more at each planned look while ``settled()`` is False and the
    budget holds the next batch (estimated from the time per repetition so far). Returns why it stopped."""
    taken: list[int] = []
    per_rep_s = 0.0
    stopped = LAST_LOOK
    for n in looks.ns:
        if taken and budget.left_s() < per_rep_s * (n - taken[-1]):
            stopped = BUDGET
            break
        t0 = time.monotonic()
        measure_to(n)
        batch = n - (taken[-1] if taken else 0)
        per_rep_s = max(per_rep_s, (time.monotonic() - t0) / batch) if batch else per_rep_s
        taken.append(n)
        if settled():
            stopped = ANSWERED
            break
    store.emit(LooksTaken(name=name, looks=taken, planned=looks.ns, stopped=stopped, confidence=looks.confidence,
                          budget_s=budget.budget_s))
    return stopped


def looks_taken(events: pd.DataFrame, name: str) -> tuple[list[int], str] | None:
    """The looks a question was measured in and why it stopped, from the store's events; None if not recorded."""
    ev = events_of(events, LooksTaken)
    ev = ev[ev["name"] == name]
    if ev.empty:
        return None
    last = ev.iloc[-1]
    return [int(x) for x in last["looks"]], str(last["stopped"])
