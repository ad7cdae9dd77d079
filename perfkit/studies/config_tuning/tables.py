"""The config tuning report's tables and charts."""

from __future__ import annotations

import pandas as pd

from perfkit.core.units import BYTES, REQUESTS_PER_S, SECONDS, SHARE
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
                            "ttft_p50_s": "TTFT p50", "ttft_p90": "TTFT p90", "ttft_p99": "TTFT p99",
                            "burst_ttft_p50": "start-up burst TTFT p50", "tpot_p50": "TPOT p50", "itl_p50": "ITL p50"},
                        ci={"ttft_p50_s": ("ttft_p50_lo", "ttft_p50_hi")}, units={"ttft_p50_s": SECONDS})


def throughput_display(res: ConfigTuningResult) -> pd.DataFrame:
    """Throughput (the figure, with its CI and n windows), requests/s, goodput, achieved concurrency, memory."""
    from perfkit.report.page import format_table

    t = res.table
    if t.empty:
        return t
    return format_table(t, {"config": "setting", "concurrency": "clients", "throughput_text": "output throughput",
                            "requests_s": "request rate", "goodput_rps": "goodput",
                            "concurrency_achieved": "achieved clients", "server_rss_max_bytes": "peak RSS",
                            "prompt_cached_share": "prompt from the server's cache",
                            "setting_applied": "all confirmed", "total_slots": "slots", "failed": "failed"},
                        units={"requests_s": REQUESTS_PER_S, "goodput_rps": REQUESTS_PER_S,
                               "server_rss_max_bytes": BYTES, "prompt_cached_share": SHARE})


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
    rates = ("rate_rps", "scheduled_rate_rps", "achieved_rate_rps", "goodput_rps")
    return format_table(rt, {"config": "setting", "rate_rps": "offered rate",
                             "scheduled_rate_rps": "this series' scheduled rate", "achieved_rate_rps": "achieved rate",
                             "achieved_concurrency": "in flight", "n": "n", "failed": "failed",
                             "ttft_sched_p99": "TTFT p99 from schedule", "e2e_sched_p99": "e2e p99 from schedule",
                             "goodput_rps": "goodput", "meets_slo_share": "share in SLO",
                             "kept_up_text": "did the server keep up? (capacity ÷ rate)",
                             "verdict": "sustained?"},
                        units={**dict.fromkeys(rates, REQUESTS_PER_S), "meets_slo_share": SHARE})


def goodput_chart(res: ConfigTuningResult):
    """Goodput against offered rate per setting (one line each), and the offered rate itself for reference."""
    from perfkit.report.charts import Chart, Series

    rt = res.rates.sort_values("rate_rps")
    series = [Series(cfg, [fmt.number(r) for r in g["rate_rps"]], [REQUESTS_PER_S.plot(v) for v in g["goodput_rps"]],
                     text=[f"goodput {REQUESTS_PER_S.text(v)} of {fmt.number(r)} offered; {SHARE.text(s)} in SLO"
                           for v, r, s in zip(g["goodput_rps"], g["rate_rps"], g["meets_slo_share"])])
              for cfg, g in rt.groupby("config", sort=False)]
    return Chart("line", "Goodput against offered rate (SLOs from the parameters)",
                 REQUESTS_PER_S.axis_label("goodput: requests meeting the SLOs"),
                 "Requests per second that met the SLOs at each offered open-loop rate, one line per setting", series,
                 xlabel=REQUESTS_PER_S.axis_label("offered rate"))


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
