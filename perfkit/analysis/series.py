"""Load series from recorded data: the steady-state window, throughput, goodput, the start-up burst, and what
the client's self-check means for each figure. One definition each, used by every study that sends load."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from perfkit.analysis import stats
from perfkit.core import fmt
from perfkit.core.events import SeriesDone, SeriesResources, events_of

# A figure moves by at most the client's error (its event-loop lag, p99); below this share of the figure
# that error can't change what the figure says.
CLIENT_ERROR_SHARE = 0.05


def steady_window(rows: pd.DataFrame, concurrency: int | None = None, warmup_fraction: float = 0.1) -> dict:
    """The steady-state window of a series, and what the client achieved in it.

    Closed loop: from the moment every stream has finished its first request (the synchronized start
    is over) to the first moment a stream has nothing left to send (concurrency starts to fall).
    Open loop: from ``warmup_fraction`` of the schedule to its last send. Without such a window (too
    few requests per stream) the whole span is used and ``steady`` is False.
    Returns ns bounds, ``achieved_concurrency`` (mean requests in flight), ``achieved_rate_rps`` (sends
    per second), ``scheduled_rate_rps`` (open loop: the pace of this series' own random schedule, which differs
    from the offered mean rate by chance, so the client's fidelity is achieved ÷ scheduled) and ``n_steady``
    (requests sent inside the window).
    """
    ok = rows.dropna(subset=["t_send_ns", "t_end_ns"]) if len(rows) else rows
    if ok.empty:
        return {"steady": False}
    send, end = ok["t_send_ns"].astype("int64"), ok["t_end_ns"].astype("int64")
    lo, hi, steady = int(send.min()), int(end.max()), False
    sched = None
    if concurrency is None and "t_scheduled_ns" in ok and ok["t_scheduled_ns"].notna().all():
        sched = ok["t_scheduled_ns"].astype("int64")
        a, b = int(sched.min()), int(sched.max())
        t0 = a + int(warmup_fraction * (b - a))
        if b > t0:
            lo, hi, steady = t0, b, True
    elif concurrency and "stream" in ok and ok["stream"].notna().all():
        g = ok.assign(send=send, end=end).sort_values("send").groupby("stream")
        t0, t1 = int(g["end"].first().max()), int(g["end"].last().min())
        if t1 > t0 and g.ngroups >= concurrency:
            lo, hi, steady = t0, t1, True
    span = (hi - lo) * 1e-9
    overlap = (np.minimum(end, hi) - np.maximum(send, lo)).clip(lower=0).sum() * 1e-9
    if sched is not None and steady:  # open loop: the sends scheduled inside, at the pace they really left
        inside = (sched >= lo) & (sched <= hi)
        rate = _pace(send[inside])
        scheduled = _pace(sched[inside])
    else:
        inside = (send >= lo) & (send <= hi)
        rate = int(inside.sum()) / span if span > 0 else math.nan
        scheduled = math.nan
    return {"steady": steady, "steady_t0_ns": lo, "steady_t1_ns": hi, "steady_s": span,
            "n_steady": int(inside.sum()), "achieved_concurrency": overlap / span if span > 0 else math.nan,
            "achieved_rate_rps": rate, "scheduled_rate_rps": scheduled}


def _pace(times_ns: pd.Series) -> float:
    """Events per second between the first and the last of ``times_ns``."""
    if len(times_ns) < 2 or not times_ns.max() > times_ns.min():
        return math.nan
    return (len(times_ns) - 1) / ((times_ns.max() - times_ns.min()) * 1e-9)


def series_checks(events: pd.DataFrame) -> dict[str, dict]:
    """series name → its last completed attempt's steady window and client self-check (series_done event)."""
    done = events_of(events, SeriesDone).drop_duplicates("series", keep="last")
    return {r["series"]: r.dropna().to_dict() for _, r in done.iterrows()}


def series_resources(events: pd.DataFrame) -> dict[str, dict]:
    """series name → what its whole window saw (the GPUs, the server's host, the server's own metrics: the
    ``series_resources`` event of its last attempt), NaN-free."""
    res = events_of(events, SeriesResources).drop_duplicates("series", keep="last")
    return {r["series"]: r.dropna().to_dict() for _, r in res.iterrows()}


def load_row(res: dict, rows: pd.DataFrame) -> dict[str, Any]:
    """One series' load figures from its window (``res``, see :func:`series_resources`) and its request rows (every
    request the series sent: a failed or timed-out one's tokens were generated too, on the same energy):
    GPU utilization and power, energy per server-counted output token over the whole window (per-request windows
    overlap under concurrency), the server's queue, batch and KV cache, its prompt-cache reuse, its host's CPU."""
    out: dict[str, Any] = {"window_s": res.get("duration_s"), "gpu_source": res.get("gpu_source"),
                           "unknown_because": res.get("unknown_because")}
    for k in ("gpu_util_pct_mean", "gpu_util_pct_max", "power_w_mean", "gpu_mem_used_bytes_max",
              "server_requests_running_mean", "server_requests_running_max", "server_requests_waiting_mean",
              "server_requests_waiting_max", "server_busy_slots_per_decode_mean", "server_kv_cache_usage_ratio_max",
              "server_kv_cache_tokens_max", "server_host_cpu_pct_mean", "server_host_mem_used_bytes_max",
              "server_cpu_pct_mean", "server_rss_bytes_max"):
        out[k] = res.get(k, np.nan)
    out["per_gpu_util"] = {int(k[3:].split("_", 1)[0]): v for k, v in res.items()
                           if k.startswith("gpu") and k.endswith("_gpu_util_pct_mean") and k[3:].split("_", 1)[0].isdigit()}
    tokens = pd.to_numeric(rows["output_tokens"], errors="coerce").sum() if "output_tokens" in rows else 0
    energy = res.get("energy_j")
    out["energy_j"] = energy if energy is not None else np.nan
    out["output_tokens"] = int(tokens) if tokens == tokens else 0
    out["energy_per_token_j"] = energy / tokens if energy is not None and tokens else np.nan
    cached, fresh = res.get("server_prompt_tokens_cached_total_delta"), res.get("server_prompt_tokens_total_delta")
    if cached is not None and fresh is not None and cached + fresh > 0:
        out["prompt_cached_share"] = cached / (cached + fresh)
    else:
        out["prompt_cached_share"] = np.nan
    hits, queries = res.get("server_prefix_cache_hits_tokens_total_delta"), res.get("server_prefix_cache_queries_tokens_total_delta")
    out["prefix_cache_hit_share"] = hits / queries if hits is not None and queries else np.nan
    accepted, drafted = res.get("server_spec_accepted_tokens_total_delta"), res.get("server_spec_draft_tokens_total_delta")
    out["spec_acceptance"] = accepted / drafted if accepted is not None and drafted else np.nan
    out["spec_draft_tokens"] = drafted if drafted is not None else np.nan
    return out


def last_attempt(rows: pd.DataFrame) -> pd.DataFrame:
    """Each series' rows of its last attempt only (an interrupted attempt was re-run whole)."""
    if rows.empty or "attempt" not in rows or "series" not in rows:
        return rows
    last = rows.groupby("series")["attempt"].transform("max")
    return rows[rows["attempt"] == last]


def token_weights(row: Any) -> list[int]:
    """Output tokens in each streamed event of a stored request row (see ``RequestRecord.tokens_per_event``)."""
    times = row.get("token_times_ns")
    n = len(times) if isinstance(times, (list, tuple, np.ndarray)) else 0
    per = row.get("event_tokens")
    if isinstance(per, (list, tuple, np.ndarray)) and len(per) == n:
        return [int(k) for k in per]
    total = row.get("output_tokens")
    if row.get("output_tokens_source") != "server" or total is None or pd.isna(total) or total <= n or n == 0:
        return [1] * n
    total = int(total)
    return [round(total * (i + 1) / n) - round(total * i / n) for i in range(n)]


def throughput(rows: pd.DataFrame, window: dict | None = None) -> stats.Estimate:
    """Output tokens/s of one series: server-counted tokens (an event carrying k tokens counts k) inside its
    steady-state window where it has one (else send of the first → end of the last request), CI by batch
    means (:func:`perfkit.analysis.stats.throughput_ci`)."""
    ok = rows[rows["ok"].astype(bool)] if "ok" in rows and len(rows) else rows
    times, weights = [], []
    for _, r in ok.iterrows():
        t = r.get("token_times_ns")
        if isinstance(t, (list, tuple, np.ndarray)) and len(t):
            times.append(list(t))
            weights.append(token_weights(r))
    if not times:
        return stats.Estimate("throughput", math.nan, math.nan, math.nan, 0, method="batch means", note="no tokens")
    if window and window.get("steady"):
        t0, t1 = int(window["steady_t0_ns"]), int(window["steady_t1_ns"])
    else:
        t0, t1 = int(ok["t_send_ns"].min()), int(ok["t_end_ns"].max())
    return stats.throughput_ci(times, t0, t1, weights=weights)


def goodput(rows: pd.DataFrame, *, ttft_s: float | None = None, tpot_s: float | None = None,
            e2e_s: float | None = None, ttft_column: str = "ttft_s", e2e_column: str = "e2e_s") -> float:
    """Requests/s that met every SLO given, over the series' last completed attempt (failed requests never
    do); the span runs from its first send to its last end."""
    rows = last_attempt(rows)
    if rows.empty:
        return math.nan
    good = rows["ok"].astype(bool)
    if ttft_s is not None:
        good &= rows[ttft_column].fillna(math.inf) <= ttft_s
    if tpot_s is not None:
        good &= rows["tpot_s"].fillna(0) <= tpot_s
    if e2e_s is not None:
        good &= rows[e2e_column if e2e_column in rows else "e2e_s"].fillna(math.inf) <= e2e_s
    start = rows["t_scheduled_ns"].min() if "t_scheduled_ns" in rows and rows["t_scheduled_ns"].notna().any() \
        else rows["t_send_ns"].min()
    span_s = (rows["t_end_ns"].max() - start) * 1e-9
    return float(good.sum() / span_s) if span_s > 0 else math.nan


# "Fell behind" is a claim: made only when the latency trend's confidence bound puts capacity ÷ rate below the
# threshold. Queued latencies are autocorrelated, which makes Sen's interval narrower than its nominal level, so the
# level is high: simulated stable queues from an empty start (tests/test_decisions.py) stay near or under 5 % false
# calls with it. The slope is computed on at most TREND_MAX_POINTS requests (evenly thinned), so memory is bounded.
TREND_CONFIDENCE = 0.99
# "Kept up" is a claim too: the interval's bottom at this (two-sided) level must reach the threshold; a short
# series whose estimate merely reaches it can't tell, and the sweep measures it longer.
KEPT_UP_CONFIDENCE = 0.80
KEPT_UP_CAPACITY_CONFIDENCE = 0.95
TREND_MAX_POINTS = 400
SATURATED = "capacity while saturated"
SATURATED_ESTIMATED = "capacity while saturated (slots estimated from occupancy)"
KEPT_UP = "kept up"
FELL_BEHIND = "fell behind"
CANT_TELL = "can't tell at this n"


@dataclass(frozen=True)
class Trend:
    """What an open-loop series' latency trend says of the server: ``kept_up`` estimates capacity ÷ rate (1 when
    the server keeps up, 0.5 at twice its capacity), ``lo``–``hi`` its interval at ``confidence`` from the slope's,
    ``n`` the requests it read, ``verdict`` :data:`KEPT_UP` (the bottom of the :data:`KEPT_UP_CONFIDENCE` interval
    reaches the threshold), :data:`FELL_BEHIND` (even the top of the ``confidence`` interval is below it) or
    :data:`CANT_TELL` (neither)."""

    kept_up: float
    lo: float
    hi: float
    n: int
    verdict: str
    confidence: float = TREND_CONFIDENCE
    method: str = "latency trend"  # or "capacity while saturated"


def trend(rows: pd.DataFrame, threshold: float = 0.9, confidence: float = TREND_CONFIDENCE,
          slots: int | None = None) -> Trend:
    """Did the server keep up with an open-loop series? From the rate it completes requests while every slot is busy
    (:func:`_capacity_trend`), its number of slots as given (requests it serves at once) or, unknown, the typical
    number in flight (:func:`occupancy_slots`); without send and end times, from the trend of latency over the
    schedule (:func:`_latency_trend`, which a queue's growth from an empty start biases)."""
    if {"t_send_ns", "t_end_ns"} <= set(rows.columns):
        known = bool(slots and slots > 0)
        tr = _capacity_trend(rows, int(slots) if known else occupancy_slots(rows), confidence)
        return tr if known else dataclasses.replace(tr, method=SATURATED_ESTIMATED)
    return _latency_trend(rows, threshold, confidence)


def _in_flight(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every send (+1) and end (−1) of a series in time order (s), and the requests in flight just before each."""
    send = pd.to_numeric(rows["t_send_ns"], errors="coerce")
    end = pd.to_numeric(rows["t_end_ns"], errors="coerce")
    keep = send.notna() & end.notna() & (send > 0) & (end >= send)
    t = np.concatenate([send[keep].to_numpy(float), end[keep].to_numpy(float)]) * 1e-9
    d = np.concatenate([np.ones(int(keep.sum())), -np.ones(int(keep.sum()))])
    order = np.lexsort((d, t))  # at one instant an end before a send: a slot freed, then taken
    t, d = t[order], d[order]
    return t, d, np.concatenate([[0], np.cumsum(d)[:-1]])


def saturated(rows: pd.DataFrame, slots: int) -> tuple[int, float]:
    """(departures, seconds) while at least ``slots`` requests were in flight: the server completes requests at
    its capacity then, whatever the offered rate. Every request counts, failed ones too: they held a slot."""
    t, d, inflight = _in_flight(rows)
    full = inflight >= slots
    busy_s = float((np.diff(t) * full[1:]).sum()) if len(t) > 1 else 0.0  # (t_i, t_i+1): as before t_i+1
    return int(((d < 0) & full).sum()), busy_s


def occupancy_slots(rows: pd.DataFrame) -> int:
    """A stand-in for a server's unknown slot count: the median number of requests in flight when one ended.
    Counting departures only above more slots than the server has still reads its capacity (it is saturated
    there too); below, the server was serving every request it held, so departures then run at least at the
    arrival rate of a stable series and never suggest falling behind."""
    _, d, inflight = _in_flight(rows)
    at_end = inflight[d < 0]
    return max(1, int(math.ceil(float(np.median(at_end))))) if len(at_end) else 1


def _capacity_trend(rows: pd.DataFrame, slots: int, confidence: float) -> Trend:
    """Capacity ÷ rate from the departures while every slot was busy: capacity = departures ÷ that time (an exact
    Poisson interval on the count), rate = the pace the series' requests were really sent at. Fell behind when
    even the top of the capacity's ``confidence`` interval is below the rate; kept up when the bottom of its
    :data:`KEPT_UP_CAPACITY_CONFIDENCE` interval reaches it, or when the slots were never all busy (no request
    ever waited for one). Unlike a latency trend, a stable queue filling from empty does not bias it."""
    nan = Trend(math.nan, math.nan, math.nan, 0, CANT_TELL, confidence)
    send = pd.to_numeric(rows["t_send_ns"], errors="coerce").dropna()
    send = send[send > 0]
    if len(send) < 3 or not send.max() > send.min():
        return nan
    rate = (len(send) - 1) / ((send.max() - send.min()) * 1e-9)
    k, busy_s = saturated(rows, slots)
    if k == 0 or busy_s <= 0:
        return Trend(1.0, math.nan, math.nan, len(send), KEPT_UP, confidence, SATURATED)
    cap = k / busy_s
    hi = float(_st.chi2.ppf(1 - (1 - confidence) / 2, 2 * k + 2)) / 2 / busy_s
    lo = float(_st.chi2.ppf((1 - KEPT_UP_CAPACITY_CONFIDENCE) / 2, 2 * k)) / 2 / busy_s
    verdict = FELL_BEHIND if hi < rate else KEPT_UP if lo >= rate else CANT_TELL
    return Trend(min(1.0, cap / rate), lo / rate, hi / rate, len(send), verdict, confidence, SATURATED)


def _latency_trend(rows: pd.DataFrame, threshold: float, confidence: float) -> Trend:
    """Without the server's slot count: read from the trend of latency over the schedule. When
    a queue grows, each request waits longer than the one before, and latency rises by (rate ÷ capacity − 1)
    seconds per second of schedule, so 1 / (1 + slope) estimates capacity ÷ rate (capped at 1). The slope of
    ``e2e_sched_s`` against the scheduled send is Theil–Sen's (the median of pairwise slopes: robust to a few
    slow requests, and to a batching server that finishes requests in groups), with Sen's interval. Successful
    requests only; NaN with fewer than 3 or no schedule."""
    nan = Trend(math.nan, math.nan, math.nan, 0, CANT_TELL, confidence)
    if "t_scheduled_ns" not in rows or "e2e_sched_s" not in rows:
        return nan
    ok = rows[rows["ok"].astype(bool)] if "ok" in rows else rows
    ok = ok.dropna(subset=["t_scheduled_ns", "e2e_sched_s"]).sort_values("t_scheduled_ns")
    if len(ok) < 3:
        return nan
    if len(ok) > TREND_MAX_POINTS:
        ok = ok.iloc[np.linspace(0, len(ok) - 1, TREND_MAX_POINTS).round().astype(int)]
    x = (ok["t_scheduled_ns"] - ok["t_scheduled_ns"].min()).to_numpy(dtype=float) * 1e-9
    if not np.ptp(x) > 0:
        return nan
    y = ok["e2e_sched_s"].to_numpy(dtype=float)
    slope, _, lo_slope, hi_slope = _st.theilslopes(y, x, alpha=confidence)
    k = lambda s: 1.0 / (1.0 + max(float(s), 0.0))  # noqa: E731
    value, lo, hi = k(slope), k(hi_slope), k(lo_slope)
    screen_lo = k(_st.theilslopes(y, x, alpha=KEPT_UP_CONFIDENCE)[3])
    verdict = FELL_BEHIND if hi < threshold else KEPT_UP if screen_lo >= threshold else CANT_TELL
    return Trend(value, lo, hi, len(ok), verdict, confidence)


def kept_up(rows: pd.DataFrame) -> float:
    """Capacity ÷ rate from the latency trend (:func:`trend`), its point estimate."""
    return trend(rows).kept_up


def request_rate(rows: pd.DataFrame) -> float:
    """Completed requests per second, first send → last end."""
    ok = rows[rows["ok"].astype(bool)] if "ok" in rows else rows
    if ok.empty:
        return math.nan
    span_s = (ok["t_end_ns"].max() - ok["t_send_ns"].min()) * 1e-9
    return len(ok) / span_s if span_s > 0 else math.nan


def in_window(rows: pd.DataFrame, window: dict | None) -> pd.DataFrame:
    """The requests sent inside the series' steady-state window (closed loop: the start-up burst, when every
    stream sends at once, and the tail are outside); all rows when the series has no window."""
    if rows.empty or not window or not window.get("steady") or "t_send_ns" not in rows:
        return rows
    t0, t1 = int(window["steady_t0_ns"]), int(window["steady_t1_ns"])
    send = pd.to_numeric(rows["t_send_ns"], errors="coerce")
    # A request that failed before it was sent has no send time: it failed in this series, so it stays.
    return rows[send.isna() | (send <= 0) | ((send >= t0) & (send <= t1))]


def burst(rows: pd.DataFrame) -> pd.DataFrame:
    """Closed loop: each stream's first request, sent together at the start."""
    if rows.empty or "stream" not in rows or rows["stream"].isna().all():
        return rows.iloc[0:0]
    return rows.sort_values("t_send_ns").groupby("stream").head(1)


def censored(rows: pd.DataFrame, column: str) -> list[float]:
    """``column`` of every request, failed or timed-out ones as +inf (beyond any limit): a failure never
    leaves a latency percentile, it is its worst value."""
    if rows.empty:
        return []
    ok = rows["ok"].astype(bool) if "ok" in rows else pd.Series(True, index=rows.index)
    vals = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)
    return [float(v) if o and pd.notna(v) else math.inf for v, o in zip(vals, ok)]


# ---- the client's self-check, figure by figure ---------------------------------------------------------------

def client_error_s(check: dict) -> float:
    """How late the client may have stamped an event in this series (the event loop's lag, p99), in s."""
    return float(check.get("client_loop_lag_p99_s", math.nan)) if check else math.nan


def client_can_move(check: dict, value_s: float) -> bool:
    """Can the client's own error change a figure of this size (by more than CLIENT_ERROR_SHARE of it)?"""
    err = client_error_s(check)
    if not math.isfinite(err) or not math.isfinite(value_s) or value_s <= 0:
        return False
    return err > CLIENT_ERROR_SHARE * value_s


def client_cell(check: dict, figures_s: dict[str, float] | None = None) -> str:
    """The client's self-check for a table cell: 'ok (…)', or what its error can change and what it can't."""
    if not check or "client_client_bound" not in check:
        return "not checked"
    err = client_error_s(check)
    base = (f"loop {check.get('client_loop_busy', math.nan):.0%} busy, lag p99 {fmt.duration(err)}")
    if check.get("client_send_lag_p99_s") is not None and math.isfinite(check.get("client_send_lag_p99_s", math.nan)):
        base += f", send lag p99 {fmt.duration(check['client_send_lag_p99_s'])}"
    if not check["client_client_bound"]:
        return f"ok ({base})"
    if figures_s:
        moved = [n for n, v in figures_s.items() if client_can_move(check, v)]
        safe = [n for n, v in figures_s.items() if not client_can_move(check, v) and math.isfinite(v)]
        what = (f"can shift {', '.join(moved)} by up to {fmt.duration(err)}" if moved else
                f"{fmt.duration(err)} is too small to change its figures")
        if safe and moved:
            what += f"; {', '.join(safe)} unaffected"
        return f"⚠ client error up to {fmt.duration(err)} ({base}): {what}"
    return f"⚠ {check.get('client_reason') or 'client-bound'}"


def client_table(events: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """How the client did in each series (its self-check and its connections): requests sent inside the
    steady window, new connections and their set-up time (never inside TTFT), requests resent after a stale
    kept-alive connection, think time between a stream's requests, the loop's busy share and lag, CPU per
    streamed chunk, and send lag against the schedule."""
    sc = series_checks(events)
    out = []
    for name, chk in sc.items():
        g = last_attempt(rows[rows["series"] == name]) if len(rows) and "series" in rows else rows.iloc[0:0]
        conn = g["connect_s"].dropna() if "connect_s" in g else pd.Series(dtype=float)
        out.append({"series": name, "requests": len(g), "in steady window": chk.get("n_steady"),
                    "new connections": chk.get("client_new_connections"),
                    "connect p50": fmt.duration(float(conn.median())) if len(conn) else "—",
                    "resent (stale connection)": int(g["stale_retry"].astype("boolean").fillna(False).astype(bool).sum())
                    if "stale_retry" in g else 0,
                    "think p99": fmt.duration(chk.get("client_think_p99_s")),
                    "loop busy": fmt.pct(chk.get("client_loop_busy")),
                    "loop lag p99 / max": f"{fmt.duration(chk.get('client_loop_lag_p99_s'))} / "
                                          f"{fmt.duration(chk.get('client_loop_lag_max_s'))}",
                    "CPU per chunk": f"{fmt.number(chk.get('client_cpu_us_per_chunk'))} µs",
                    "send lag p99": fmt.duration(chk.get("client_send_lag_p99_s"))})
    return pd.DataFrame(out).set_index("series") if out else pd.DataFrame()
