"""The winner's capacity: open-loop rates around its closed-loop rate until the highest it sustains inside the
SLOs is bracketed."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.analysis import series as S
from perfkit.analysis.capacity import BRACKET_RATIO, NOT_SUSTAINED, SUSTAINED, rate_verdict
from perfkit.client.backends import Sampling
from perfkit.core import settings as SV
from perfkit.measure.session import Session
from perfkit.studies.base import StudyContext

from .params import TuningParams
from .records import recorded_candidates


def measure_capacity(ctx: StudyContext, s: Session, winner: str) -> None:
    """Open-loop rates (requests on a schedule, latency timed from it) around the winner's closed-loop rate, until
    the highest rate it sustains inside the SLOs is bracketed (:mod:`perfkit.analysis.capacity`) or the steps run
    out. Each next rate is decided from the recorded series only, so a resumed run tries the same ones."""
    c = ctx.cfg
    if not c.capacity_steps:
        return
    settings = recorded_candidates(ctx)[winner]["settings"]
    s.restart(settings)
    for step in range(c.capacity_steps):
        rate = next_rate(c, ctx.store.trials(), winner, parallel_slots(settings))
        if rate is None:
            break
        s.runner.open_loop(c.model, rate, c.rate_requests, series=f"capacity/r{rate:g}",
                           seed=ctx.params.seed + step, sampling=Sampling(c.num_predict, think=SV.think_of(settings)),
                           prompt_words=c.prompt_words,
                           tags={"candidate": winner, "phase": "capacity", "rate_rps": rate})


def parallel_slots(settings: dict) -> int | None:
    """The parallel slots a setting asks for (the capacity trend reads the server by them); None if unset."""
    v = SV.value_of(settings, SV.PARALLEL)
    return int(v) if v is not None else None


def rate_verdicts(c: TuningParams, df: pd.DataFrame, winner: str, slots: int | None) -> dict[float, str]:
    """Each open-loop rate tried on the winner → sustained, not sustained, or can't tell (``slots``: its parallel
    slots, which the trend reads its capacity by)."""
    if df.empty or "phase" not in df:
        return {}
    rows = df[(df["phase"] == "capacity") & (df["candidate"] == winner)]
    if rows.empty or "rate_rps" not in rows:
        return {}
    return {float(r): rate_verdict(S.last_attempt(g), c.slo, slots)[0]
            for r, g in rows.groupby("rate_rps", sort=True)}


def next_rate(c: TuningParams, df: pd.DataFrame, winner: str, slots: int | None) -> float | None:
    """0.7× the winner's closed-loop rate first, then 1.4×; then double the highest when all were sustained, halve
    the lowest when none was, or the geometric middle of a bracket wider than :data:`BRACKET_RATIO`; None once
    bracketed that closely."""
    verdicts = rate_verdicts(c, df, winner, slots)
    if not verdicts:
        search = df[(df.get("candidate") == winner) & df["series"].astype(str).str.startswith("cand/")] \
            if len(df) and "candidate" in df else df.iloc[0:0]
        # Per series (each look restarted the server): pooled, the gaps between looks would count as idle time.
        rates = [S.request_rate(S.last_attempt(g)) for _, g in search.groupby("series")] if len(search) else []
        closed = float(pd.Series(rates).median()) if rates else math.nan
        return float(f"{0.7 * closed:.2g}") if closed > 0 else None
    tried = sorted(verdicts)
    ok = [r for r in tried if verdicts[r] == SUSTAINED]
    no = [r for r in tried if verdicts[r] == NOT_SUSTAINED and (not ok or r > max(ok))]
    if len(tried) == 1:
        nxt = 2 * tried[0]
    elif ok and no:
        if no[0] / max(ok) <= BRACKET_RATIO:
            return None
        nxt = math.sqrt(max(ok) * no[0])
    elif ok:
        nxt = 2 * tried[-1]
    elif no:
        nxt = tried[0] / 2
    else:
        return None
    nxt = float(f"{nxt:.2g}")
    return nxt if nxt > 0 and nxt not in tried else None


def capacity_bracket(c: TuningParams, df: pd.DataFrame, winner: str | None, slots: int | None
                     ) -> tuple[float, float, int]:
    """(highest rate shown sustained, lowest rate above it shown not sustained, rates tried); NaN where not shown."""
    if winner is None:
        return math.nan, math.nan, 0
    v = rate_verdicts(c, df, winner, slots)
    ok = [r for r, x in v.items() if x == SUSTAINED]
    top = max(ok) if ok else math.nan
    above = [r for r, x in v.items() if x == NOT_SUSTAINED and (not ok or r > top)]
    return top, (min(above) if above else math.nan), len(v)
