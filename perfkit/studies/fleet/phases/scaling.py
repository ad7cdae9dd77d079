"""Scaling: one server directly at c clients, and the fleet of N through the proxy at N·c (the same load per
server); efficiency 1 means the fleet does N times the one server's work at every client count."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from perfkit.analysis import series as S, stats
from perfkit.analysis.requests import ci_cell, est, measured
from perfkit.core.units import TOKENS_PER_S

from ..phase_run import PhaseRun
from ..records import phase_rows


def measure(run: PhaseRun) -> None:
    c, n = run.cfg, len(run.fleet.servers)
    for conc in c.concurrency:
        tags = {"phase": "scaling", "clients_per_server": conc}
        run.direct[0].closed_loop(run.model, conc, c.requests, series=f"scaling/direct/c{conc}",
                                  sampling=run.sampling, prompt_words=c.prompt_words,
                                  tags={**tags, "target": "direct"}, workload=run.workload)
        run.proxy.closed_loop(run.model, n * conc, n * c.requests, series=f"scaling/proxy/c{n * conc}",
                              sampling=run.sampling, prompt_words=c.prompt_words, tags={**tags, "target": "proxy"},
                              workload=run.workload)


def scaling_table(df: pd.DataFrame, ev: pd.DataFrame, n_servers: int) -> pd.DataFrame:
    """Per client count per server c: one server's throughput directly at c clients and the fleet's through
    the proxy at N·c, each with its CI, latency percentiles (steady window), and scaling efficiency = fleet
    throughput ÷ (N × one server's), 1 = perfect at every c."""
    sc = S.series_checks(ev)
    g_phase = phase_rows(df, "scaling")
    if g_phase.empty:
        return pd.DataFrame()
    per = "clients_per_server" if "clients_per_server" in g_phase else "concurrency"
    rows = [_series_row(int(c), target, g_all, sc.get(g_all["series"].iloc[0], {}))
            for (c, target), g_all in S.last_attempt(g_phase).groupby([per, "target"])]
    t = pd.DataFrame(rows)
    eff = [_efficiency_of(t, r, n_servers) for _, r in t.iterrows()]
    t["efficiency"] = [e.value for e in eff]
    t["efficiency_lo"] = [e.lo for e in eff]
    t["efficiency_hi"] = [e.hi for e in eff]
    t["efficiency_est"] = eff
    return t.sort_values(["clients_per_server", "target"]).reset_index(drop=True)


def _series_row(c: int, target: str, g_all: pd.DataFrame, chk: dict[str, Any]) -> dict[str, Any]:
    g = measured(g_all)
    steady = S.in_window(g, chk)
    steady_all = S.in_window(g_all, chk)  # tails count failures as beyond the limit, every percentile alike
    tp = S.throughput(g, chk)
    return {"clients_per_server": c, "target": target, "clients": int(g_all["concurrency"].iloc[0]),
            "n": len(steady), "n_series": len(g_all), "failed": int(len(g_all) - len(g)), "tok_s": tp.value,
            "tok_s_lo": tp.lo, "tok_s_hi": tp.hi, "tok_s_text": TOKENS_PER_S.estimate(tp), "estimate": tp,
            "ttft_p50": ci_cell(est(steady["ttft_s"])), "ttft_p90": ci_cell(est(S.censored(steady_all, "ttft_s"), "p90")),
            "ttft_p99": ci_cell(est(S.censored(steady_all, "ttft_s"), "p99")),
            "e2e_p50": ci_cell(est(steady["e2e_s"])), "e2e_p99": ci_cell(est(S.censored(steady_all, "e2e_s"), "p99")),
            "achieved_concurrency": chk.get("achieved_concurrency", math.nan),
            "client_check": S.client_cell(chk, {"TTFT": est(steady["ttft_s"]).value}),
            "client_bound": bool(chk.get("client_client_bound", False))}


def _efficiency_of(t: pd.DataFrame, r: pd.Series, n_servers: int) -> stats.Estimate:
    d = t[(t["clients_per_server"] == r["clients_per_server"]) & (t["target"] == "direct")]
    if r["target"] != "proxy" or d.empty:
        return stats.Estimate("efficiency", math.nan, math.nan, math.nan, 0)
    return efficiency(r["estimate"], d.iloc[0]["estimate"], n_servers)


def efficiency(fleet: stats.Estimate, one: stats.Estimate, n_servers: int) -> stats.Estimate:
    """Fleet throughput ÷ (N × one server's), with a CI from the two throughput CIs on the log scale."""
    from perfkit.analysis.verdicts import compare_estimates

    scaled = stats.Estimate(one.stat, one.value * n_servers, one.lo * n_servers, one.hi * n_servers, one.n,
                            one.confidence, one.method)
    r = compare_estimates(scaled, fleet, "higher").ratio
    return stats.Estimate("efficiency", r.value, r.lo, r.hi, min(fleet.n, one.n), r.confidence,
                          "fleet ÷ (N × one server), CI from both batch-means CIs (log scale)")
