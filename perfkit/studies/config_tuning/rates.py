"""The open-loop sweep: which rates each setting is offered, and whether it sustained each, from the stored
trials only (so a resumed run makes the same choices)."""

from __future__ import annotations

import math
import zlib

import pandas as pd

from perfkit.core.events import AutoRates, SettingsConfirmed, events_of
from perfkit.analysis import series as S
from perfkit.analysis.capacity import (BRACKET_RATIO, KEPT_UP, NOT_SUSTAINED, SUSTAINED, SUSTAINED_SHARE, meets_slo,
                                       rate_verdict)
from perfkit.analysis.requests import ci_cell, col, est, measured
from perfkit.analysis.series import CANT_TELL
from perfkit.core import fmt
from perfkit.core.schema import Slo
from perfkit.studies.base import StudyContext


def planned_rates(ctx: StudyContext, i: int) -> list[float]:
    """The open-loop rates for setting ``i``: as given, or (auto) shares of the capacity its closed loop measured
    at the most clients, chosen once and recorded so that a resumed run sweeps the same ones."""
    c = ctx.cfg
    if c.rates_rps != "auto":
        return list(c.rates_rps)
    got = events_of(ctx.store.events(), AutoRates)
    got = got[got["config_index"] == i]
    if len(got):
        return list(got.iloc[-1]["rates_rps"])
    df = ctx.store.trials()
    top = max(c.concurrency)
    g = S.last_attempt(df[(df["series"] == f"cfg{i}/c{top}")]) if len(df) and "series" in df else df.iloc[0:0]
    capacity = S.request_rate(g) if len(g) else math.nan
    if not (capacity > 0):
        ctx.store.emit(AutoRates(config_index=i, rates_rps=[], why="the closed loop measured no capacity to take shares of"))
        return []
    rates = sorted({float(f"{capacity * f:.2g}") for f in c.rate_fractions})
    ctx.store.emit(AutoRates(config_index=i, rates_rps=rates, capacity_rps=capacity, clients=top))
    return rates


def next_rate(df: pd.DataFrame, i: int, slo: Slo, slots: int | None = None) -> float | None:
    """The next open-loop rate for setting ``i``: twice the highest when each rate so far was sustained, half
    the lowest when none was, the geometric middle of the bracket (highest sustained, next not sustained) while it
    spans more than :data:`BRACKET_RATIO`; None when the limit is bracketed that closely. Decided from the stored
    trials only, so a resumed run makes the same choices."""
    if df.empty or "mode" not in df or "rate_rps" not in df:
        return None
    tried = sorted(df[(df["mode"] == "open") & (df["config_index"] == i)]["rate_rps"].dropna().unique())
    if not tried:
        return None
    verdict = [judge_rate(df, i, r, slo, slots)[0] for r in tried]
    sustained = [v == SUSTAINED for v in verdict]
    missed = [v == NOT_SUSTAINED for v in verdict]
    if any(sustained) and any(missed):
        lo = max(r for r, ok in zip(tried, sustained) if ok)
        above = [r for r, no in zip(tried, missed) if no and r > lo]
        if not above or above[0] / lo <= BRACKET_RATIO:
            return None
        nxt = float(f"{math.sqrt(lo * above[0]):.2g}")  # narrow a wide bracket at its geometric middle
        return nxt if lo < nxt < above[0] and nxt not in tried else None
    if not any(sustained) and not any(missed):
        return None  # no rate could be told either way: more rates would not bracket anything
    nxt = float(f"{(2 * tried[-1] if any(sustained) else tried[0] / 2):.2g}")
    return nxt if nxt > 0 and nxt not in tried and nxt <= 10_000 else None


def setting_slots(events: pd.DataFrame, i: int) -> int | None:
    """The parallel slots setting ``i`` ran with, as its check found them (None when unknown)."""
    got = events_of(events, SettingsConfirmed)
    got = got[got["config_index"] == i]["total_slots"].dropna()
    return int(got.iloc[-1]) if len(got) and got.iloc[-1] > 0 else None


def closed_capacity(df: pd.DataFrame, i: int, slo: Slo) -> tuple[float, float, int]:
    """What setting ``i`` served in its closed loop at the most clients: requests/s, requests/s inside the SLOs
    (goodput), and that client count."""
    if df.empty or "mode" not in df:
        return math.nan, math.nan, 0
    closed = S.last_attempt(df[(df["mode"] == "closed") & (df["config_index"] == i)])
    if closed.empty:
        return math.nan, math.nan, 0
    top = int(closed["concurrency"].max())
    g = closed[closed["concurrency"] == top]
    return S.request_rate(g), S.goodput(g, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s, e2e_s=slo.e2e_s), top


def judge_rate(df: pd.DataFrame, i: int, rate: float, slo: Slo,
               slots: int | None = None) -> tuple[str, S.Trend, str]:
    """The verdict on setting ``i`` at ``rate`` (its longest series, :func:`rate_verdict`), its trend, and why the
    open and the closed loop can't both be read ("" when they can; the verdict is then :data:`CANT_TELL`)."""
    rows = rate_rows(df, i, rate)
    verdict, tr = rate_verdict(rows, slo, slots)
    clash = _contradiction(df, i, rate, slo, rows, verdict)
    return (CANT_TELL if clash else verdict), tr, clash


def _contradiction(df: pd.DataFrame, i: int, rate: float, slo: Slo, rows: pd.DataFrame, verdict: str) -> str:
    """Why the open loop at ``rate`` and the closed loop can't both be read, or "": the open loop calls the rate
    not sustained though it is at most 0.9× what the same setting served in its closed loop — inside the SLOs when
    the open loop missed them, at all when its trend says the server fell behind. A server that serves R req/s to
    its clients, each waiting its turn, does not fail at 0.9 R offered on a schedule."""
    if verdict != NOT_SUSTAINED or not len(rows):
        return ""
    served, good, clients = closed_capacity(df, i, slo)
    missed = float(meets_slo(rows, slo).mean()) < SUSTAINED_SHARE
    ref = good if missed else served
    if not (ref > 0 and rate <= KEPT_UP * ref):
        return ""
    said = (f"only {fmt.pct(float(meets_slo(rows, slo).mean()))} of its requests met the SLOs" if missed else
            "the server fell behind by its own completions")
    what = "inside the SLOs" if missed else "in all"
    return (f"{said} at {fmt.number(rate)} req/s, while its closed loop served {fmt.number(ref)} req/s {what} to "
            f"{clients} clients: both can't hold, so at this n that rate's verdict is not read ({len(rows)} requests; "
            "a busy machine or a burst of arrivals can do this, and a longer series would settle it)")


def series_seed(seed: int, series: str) -> int:
    """Each series its own arrivals: one seed for all would give every rate the same random pattern, so their
    errors (a realised rate 1.2× the offered one, say) would repeat across the whole sweep."""
    return zlib.crc32(f"{seed}/{series}".encode())


def rate_rows(df: pd.DataFrame, i: int, rate: float) -> pd.DataFrame:
    """The requests of the longest series at this rate (each longer one was run because a shorter one could not
    tell), its last attempt."""
    g = df[(df["mode"] == "open") & (df["config_index"] == i) & (df["rate_rps"] == rate)]
    if "series" in g and len(g) and g["series"].nunique() > 1:
        g = g[g["series"] == g.groupby("series").size().idxmax()]
    return g[g["attempt"] == g["attempt"].max()] if "attempt" in g and len(g) else g


def rate_table(df: pd.DataFrame, sc: dict[str, dict], slo, slots: dict[int, int | None] | None = None) -> pd.DataFrame:
    """Open-loop sweep: per setting and offered rate, what was achieved, latency from the send and from
    the schedule (the one a user waits; failed requests count as beyond the limit), and goodput: requests/s
    meeting the SLOs, timed from the schedule. Empty when the parameters have no sweep."""
    if df.empty or "mode" not in df or "rate_rps" not in df or not (df["mode"] == "open").any():
        return pd.DataFrame()
    rows = []
    for (i, rate), _ in df[df["mode"] == "open"].groupby(["config_index", "rate_rps"]):
        g_all = rate_rows(df, i, rate)
        chk = sc.get(g_all["series"].iloc[0], {})
        g = measured(g_all)
        good_mask = meets_slo(g_all, slo)
        verdict, tr, clash = judge_rate(df, i, rate, slo, (slots or {}).get(int(i)))
        t50 = est(col(g, "ttft_s"))
        rows.append({"config_index": i, "config": g_all["config"].iloc[0], "rate_rps": rate, "n": len(g_all),
                     "failed": int(len(g_all) - len(g)), "achieved_rate_rps": chk.get("achieved_rate_rps", math.nan),
                     "scheduled_rate_rps": chk.get("scheduled_rate_rps", math.nan),
                     "achieved_concurrency": chk.get("achieved_concurrency", math.nan),
                     "ttft_p50_s": t50.value, "ttft_p50_lo": t50.lo, "ttft_p50_hi": t50.hi,
                     "ttft_p99": ci_cell(est(S.censored(g_all, "ttft_s"), "p99")),
                     "ttft_sched_p99": ci_cell(est(S.censored(g_all, "ttft_sched_s"), "p99")),
                     "e2e_sched_p99": ci_cell(est(S.censored(g_all, "e2e_sched_s"), "p99")),
                     "send_lag_p99_s": g_all["send_lag_s"].quantile(0.99) if "send_lag_s" in g_all else math.nan,
                     "goodput_rps": S.goodput(g_all, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s, e2e_s=slo.e2e_s,
                                              ttft_column="ttft_sched_s", e2e_column="e2e_sched_s"),
                     "meets_slo_share": float(good_mask.mean()), "kept_up": tr.kept_up,
                     "kept_up_text": _trend_text(tr), "trend_method": tr.method, "verdict": verdict,
                     "sustained": verdict == SUSTAINED,
                     "not_sustained": verdict == NOT_SUSTAINED, "contradiction": clash,
                     "client_check": S.client_cell(chk), "client_bound": bool(chk.get("client_client_bound", False))})
    return pd.DataFrame(rows)


def _trend_text(tr: S.Trend) -> str:
    """'0.62 [0.41, 0.80]: fell behind'."""
    if not math.isfinite(tr.kept_up):
        return "too few requests for a trend"
    if tr.method.startswith(S.SATURATED):
        if not math.isfinite(tr.lo):
            return "no request waited for a slot: kept up"
        return (f"{fmt.number(tr.lo)}–{fmt.number(tr.hi)} (capacity while every slot was busy ÷ rate, "
                f"{S.KEPT_UP_CAPACITY_CONFIDENCE:.0%}–{S.TREND_CONFIDENCE:.0%} bounds): {tr.verdict}")
    ci = f" [{fmt.number(tr.lo)}, {fmt.number(tr.hi)}]" if math.isfinite(tr.lo) and tr.hi > tr.lo else ""
    return f"{fmt.number(tr.kept_up)}{ci}: {tr.verdict}"
