"""The config tuning report's tables and charts."""

from __future__ import annotations

import pandas as pd

from perfkit.core import fmt
from perfkit.report import load

from .results import ConfigTuningResult


def latency_display(res: ConfigTuningResult) -> pd.DataFrame:
    """Latency per setting and client count, readable: TTFT p50/p90/p99, the start-up burst apart, TPOT, ITL."""
    from perfkit.report.page import format_table

    t = res.table
    if t.empty:
        return t
    return format_table(t, {"config": "setting", "concurrency": "clients", "n": "n (steady)",
                            "ttft_p50_s": "TTFT p50 (ms)", "ttft_p90": "TTFT p90", "ttft_p99": "TTFT p99",
                            "burst_ttft_p50": "start-up burst TTFT p50", "tpot_p50": "TPOT p50", "itl_p50": "ITL p50"},
                        ci={"ttft_p50_s": ("ttft_p50_lo", "ttft_p50_hi")}, scale={"ttft_p50_s": 1e3})


def throughput_display(res: ConfigTuningResult) -> pd.DataFrame:
    """Throughput (the figure, with its CI and n windows), requests/s, goodput, achieved concurrency, memory."""
    from perfkit.report.page import format_table

    t = res.table
    if t.empty:
        return t
    return format_table(t, {"config": "setting", "concurrency": "clients", "throughput_text": "output throughput",
                            "requests_s": "requests/s", "goodput_rps": "goodput req/s",
                            "concurrency_achieved": "achieved clients", "server_rss_max_bytes": "peak RSS (MiB)",
                            "prompt_cached_share": "prompt from the server's cache (%)",
                            "setting_applied": "all confirmed", "total_slots": "slots", "failed": "failed"},
                        scale={"server_rss_max_bytes": 1 / 2**20, "prompt_cached_share": 100})


def load_display(res: ConfigTuningResult) -> pd.DataFrame:
    """What the server and its host did under each load (see :func:`perfkit.report.load.load_display`)."""
    return load.load_display(res.load)


def load_sources(res: ConfigTuningResult) -> str:
    return load.load_sources(res.load, res.manifest)


def rates_display(res: ConfigTuningResult) -> pd.DataFrame:
    from perfkit.report.page import format_table

    rt = res.rates
    if rt.empty:
        return rt
    return format_table(rt, {"config": "setting", "rate_rps": "offered req/s",
                             "scheduled_rate_rps": "this series' schedule req/s", "achieved_rate_rps": "achieved req/s",
                             "achieved_concurrency": "in flight", "n": "n", "failed": "failed",
                             "ttft_sched_p99": "TTFT p99 from schedule", "e2e_sched_p99": "e2e p99 from schedule",
                             "goodput_rps": "goodput req/s", "meets_slo_share": "share in SLO",
                             "kept_up_text": "did the server keep up? (capacity ÷ rate)",
                             "verdict": "sustained?"})


def goodput_chart(res: ConfigTuningResult):
    """Goodput against offered rate per setting (one line each), and the offered rate itself for reference."""
    from perfkit.report.charts import Chart, Series

    rt = res.rates.sort_values("rate_rps")
    series = [Series(cfg, [fmt.number(r) for r in g["rate_rps"]], list(g["goodput_rps"]),
                     text=[f"goodput {fmt.number(v)} req/s of {fmt.number(r)} offered; {fmt.pct(s)} in SLO"
                           for v, r, s in zip(g["goodput_rps"], g["rate_rps"], g["meets_slo_share"])])
              for cfg, g in rt.groupby("config", sort=False)]
    return Chart("line", "Goodput against offered rate (SLOs from the parameters)", "requests/s meeting the SLOs",
                 "Requests per second that met the SLOs at each offered open-loop rate, one line per setting", series,
                 xlabel="offered requests/s")


def settings_table(res: ConfigTuningResult) -> pd.DataFrame:
    """Per configuration and setting: confirmed / not applied / unverifiable, the effective value and the evidence."""
    rows = []
    for _, c in res.checks.iterrows():
        for name, chk in (c.get("checks") or {}).items():
            rows.append({"configuration": c["config"], "setting": name, "wanted": chk.get("wanted"),
                         "status": chk.get("status"), "in effect": chk.get("effective") or "—",
                         "evidence": chk.get("evidence", "")})
    return pd.DataFrame(rows).set_index(["configuration", "setting"]) if rows else pd.DataFrame()


def baseline_vs_best(res: ConfigTuningResult) -> pd.DataFrame:
    """The first setting (the baseline) against the leader per objective: the row of the best-setting claim that
    compares them (so this verdict and the claim can't disagree). Empty when the baseline leads."""
    t, b = res.table, res.best
    if t.empty or not b:
        return pd.DataFrame()
    base = t.sort_values("config_index")["config"].iloc[0]
    rows = []
    for obj, name in (("latency", "TTFT at concurrency {}"), ("throughput", "output throughput at concurrency {}")):
        x = b.get(obj)
        if x and x["config"] != base and base in x["claim"].rows:
            rows.append((name.format(x["at_concurrency"]), x["config"], x["claim"].rows[base]))
    return pd.DataFrame([{"objective": o, "baseline": base, "best": cfg, "baseline value": r.before,
                          "best value": r.after, "best / baseline": r.ratio_text, "change": r.change_text,
                          "verdict": r.verdict, "why": r.reason} for o, cfg, r in rows]).set_index("objective") \
        if rows else pd.DataFrame()
