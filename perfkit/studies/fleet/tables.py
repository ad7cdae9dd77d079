"""The report's tables: each of the result's tables formatted for reading, and the failover, timeout and cache
summaries as two-column (figure, value) tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

from perfkit.analysis.requests import error_summary
from perfkit.analysis.stats import Estimate
from perfkit.core import fmt

from .formatting import signed, span
from .results import CacheSummary, Failover, FleetResult, TimeoutSummary


def scaling_display(res: FleetResult) -> pd.DataFrame:
    from perfkit.report.page import format_table

    t = res.scaling
    if t.empty:
        return t
    eff = {int(r["clients_per_server"]): (res.figures.get(f"fleet/efficiency/{int(r['clients_per_server'])}"))
           for _, r in t.iterrows()}
    t = t.assign(efficiency_text=[eff[int(c)].text() if eff.get(int(c)) is not None and tg == "proxy" else "—"
                                  for c, tg in zip(t["clients_per_server"], t["target"])])
    return format_table(t, {"clients_per_server": "clients per server", "target": "target", "clients": "clients",
                            "tok_s_text": "output throughput", "efficiency_text": "scaling efficiency",
                            "ttft_p50": "TTFT p50", "ttft_p99": "TTFT p99", "e2e_p50": "e2e p50",
                            "achieved_concurrency": "achieved clients"})


def balance_display(res: FleetResult) -> pd.DataFrame:
    from perfkit.report.page import format_table

    b = res.balance
    if b.empty:
        return b
    return format_table(b.assign(**{"configured share": b["configured share"].map(fmt.pct)}),
                        {"server": "server", "weight": "weight", "configured share": "configured share",
                         "requests": "requests", "share": "share", "matches weights": "matches"},
                        ci={"share": ("share_lo", "share_hi")})


def overhead_display(res: FleetResult) -> pd.DataFrame:
    o = res.overhead
    if o.empty:
        return o
    rows = [{"buffering": r["buffering"], "pairs": r["n"], "TTFT direct": r["ttft_direct"], "TTFT proxy": r["ttft_proxy"],
             "added TTFT": span(r["added_ttft_s"], r["added_ttft_lo"], r["added_ttft_hi"]),
             "added e2e": span(r["added_e2e_s"], r["added_e2e_lo"], r["added_e2e_hi"]),
             "first token held back": {True: "yes", False: "no", None: "unknown"}[r["first_token_held_back"]]}
            for _, r in o.iterrows()]
    return pd.DataFrame(rows).set_index("buffering")


def cold_display(res: FleetResult) -> pd.DataFrame:
    c = res.cold_upstream
    if c.empty:
        return c
    return pd.DataFrame({"server": c["server"], "cold": c["cold"].map({True: "yes", False: "no"}),
                         "requests": c["requests"], "first TTFT": c["first_ttft_s"].map(fmt.duration),
                         "TTFT p50": c["ttft_p50"], "TTFT max": c["ttft_max_s"].map(fmt.duration)}).set_index("server")


def hosts_display(res: FleetResult) -> pd.DataFrame:
    h = res.hosts
    if h.empty:
        return h
    return pd.DataFrame({"server": h["server"], "phase": h["phase"], "samples": h["samples"],
                         "server CPU mean": h["server_cpu_pct_mean"].map(lambda x: f"{x:.0f}% of a core"),
                         "server CPU max": h["server_cpu_pct_max"].map(lambda x: f"{x:.0f}%"),
                         "server memory max": h["server_rss_bytes_max"].map(fmt.size),
                         "processes": h["server_processes_max"],
                         "GPU utilization": h["gpu_util_pct_mean"].map(
                             lambda x: fmt.NA if pd.isna(x) else f"{x:.0f}%")}).set_index(["server", "phase"])


def cold_disk_display(res: FleetResult) -> pd.DataFrame:
    c = res.cold_disk
    if c.empty:
        return c
    return pd.DataFrame({"server": c["server"],
                         "file in page cache at send": c["file_in_page_cache"].map(
                             lambda x: fmt.NA if x is None or pd.isna(x) else fmt.pct(x)),
                         "first TTFT": c["ttft_s"].map(fmt.duration), "load (server)": c["load_s"].map(fmt.duration),
                         "end to end": c["e2e_s"].map(fmt.duration),
                         "outcome": [("answered" if ok else f"failed: {error_summary(e)}")
                                     for ok, e in zip(c["ok"], c["error"])]}
                        ).set_index("server")


def timeline_display(res: FleetResult, server: str) -> pd.DataFrame:
    t = res.timelines.get(server)
    if t is None or t.empty:
        return pd.DataFrame()
    u = float(t["clock_uncertainty_s"].iloc[0])
    return pd.DataFrame({f"time (± {fmt.duration(u)})" if u else "time": t["t_s"].map(
                             lambda x: fmt.NA if pd.isna(x) else f"{x:+.3f} s"),
                         "phase": t["phase"], "event": t["kind"], "what": t["what"]}).reset_index(drop=True)


def clocks_display(res: FleetResult) -> pd.DataFrame:
    rows = [{"node": n.name, "role": n.role, "host name": n.hostname, "perfkit": n.perfkit_version,
             "clock offset": signed(n.clock_offset_ns * 1e-9),
             "uncertainty": "± " + fmt.duration(n.clock_uncertainty_s),
             "round trips": n.clock_round_trips} for n in res.cluster_nodes]
    return pd.DataFrame(rows).set_index("node") if rows else pd.DataFrame()


# ---- the summaries, as (figure, value) -----------------------------------------------------------------------
Row = tuple[str, str]


def details(res: FleetResult, part: str) -> pd.DataFrame:
    """One phase's summary (failover, timeout, cache) as a two-column table for the report."""
    rows: list[Row] = []
    if part == "failover" and res.failover is not None:
        rows = failover_rows(res.failover)
    elif part == "timeout":
        rows = timeout_rows(res.timeout)
    elif part == "cache" and res.cache is not None:
        rows = cache_rows(res.cache)
    frame = [{"figure": label, "value": value} for label, value in rows]
    return pd.DataFrame(frame).set_index("figure") if frame else pd.DataFrame()


def value_text(v: Any, seconds: bool = False) -> str:
    """A summary's value as the table shows it; ``seconds``: a float is a duration."""
    if isinstance(v, float) and seconds:
        return fmt.duration(v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {x}" for k, x in v.items()) or "none"
    if isinstance(v, list):
        return " then ".join(map(str, v))
    return fmt.number(v) if isinstance(v, float) else str(v)


def _share_text(e: Estimate) -> str:
    return f"{fmt.pct(e.value)} [{fmt.pct(e.lo)}, {fmt.pct(e.hi)}] (n={e.n}, {e.method})"


def failover_rows(fo: Failover) -> list[Row]:
    if not fo.kill_reached:
        return [("requests", value_text(fo.requests)), ("note", "the kill was not reached")]
    return [("requests", value_text(fo.requests)), ("answered", value_text(fo.ok)), ("failed", value_text(fo.failed)),
            ("failure classes", value_text(fo.failure_classes)), ("killed server", value_text(fo.victim)),
            ("requests sent after the kill", value_text(fo.sent_after_kill)),
            ("proxy tries on the dead server (access log)", value_text(fo.proxy_tries_on_dead_server)),
            ("of those, retried on another server and answered", value_text(fo.retried_elsewhere_ok)),
            ("last try on the dead server after the kill",
             value_text(fo.last_try_on_dead_server_s_after_kill, seconds=True)),
            ("access-log entries read", value_text(fo.access_log_entries))]


def timeout_rows(to: TimeoutSummary) -> list[Row]:
    rows = [("proxy_read_timeout configured", value_text(to.configured_read_timeout_s, seconds=True))]
    a = to.advice
    if a is not None:
        rows += [("cold starts measured", value_text(a.cold_n)),
                 ("cold-start TTFT p50", value_text(a.cold_ttft_p50_text)),
                 ("longest cold start (TTFT)", value_text(a.cold_ttft_max_s, seconds=True)),
                 ("recommended proxy_read_timeout", value_text(a.recommended_read_timeout_s, seconds=True)),
                 ("basis of the advice", value_text(a.basis))]
    rows += [(f"proxy_read_timeout {fmt.duration(p.proxy_read_timeout_s)} ({p.probe})", p.outcome) for p in to.probes]
    return rows


def cache_rows(ca: CacheSummary) -> list[Row]:
    rows: list[Row] = []
    if ca.seed is not None:
        rows += [("as configured: two identical requests", value_text(ca.seed.statuses)),
                 ("server's X-Accel-Buffering", value_text(ca.seed.server_accel_buffering))]
    rows += [("requests", value_text(ca.requests)), ("cache status of the requests", value_text(ca.status_counts)),
             ("proxy reports cache status", value_text(ca.status_header)), ("hit ratio", _share_text(ca.hit_ratio))]
    if ca.hits is not None:
        rows += [("hit TTFT", value_text(ca.hits.ttft_text)), ("hit end to end", value_text(ca.hits.e2e_text)),
                 ("hit ITL p50", value_text(ca.hits.itl_p50_s, seconds=True))]
    if ca.misses is not None:
        rows += [("miss TTFT", value_text(ca.misses.ttft_text)), ("miss end to end", value_text(ca.misses.e2e_text))]
        if ca.misses.over_hit_e2e_text is not None:
            rows.append(("miss ÷ hit, end to end", value_text(ca.misses.over_hit_e2e_text)))
    rows.append(("same prompt, one option changed", value_text(ca.options_differ_status)))
    if ca.sampled is not None:
        rows += [("distinct sampled answers through the cache", value_text(ca.sampled.distinct_via_cache)),
                 ("distinct sampled answers from the server", value_text(ca.sampled.distinct_direct)),
                 ("sampled requests each", value_text(ca.sampled.n))]
    if ca.stale is not None:
        s = ca.stale
        rows.append(("after a model change", value_text({"proxy_status": s.proxy_status,
                                                         "proxy_answer_is_old_model": s.proxy_answer_is_old_model,
                                                         "server_answer_changed": s.server_answer_changed})))
    return rows
