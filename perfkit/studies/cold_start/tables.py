"""The cold start report's tables and charts."""

from __future__ import annotations

import pandas as pd

from perfkit.core.units import SECONDS, TOKENS
from perfkit.analysis.requests import ci_cell, est, latency_table, measured
from perfkit.analysis.verdicts import MIN_EFFECT, compare_samples
from perfkit.core import fmt

from .results import ColdStartResult


def state_table(res: "ColdStartResult") -> pd.DataFrame:
    """Per cache state: medians of e2e, TTFT and the client's split, each in the unit that reads well."""
    b = res.by_state
    rows = []
    for _, r in b.iterrows():
        row = {"cache state": r["cache_state"], "n": int(r["n"])}
        for m, name in _state_columns(res):
            row[name] = (TOKENS if m == "thinking_tokens" else SECONDS).ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"])
        g = measured(res.states)
        g = g[g["cache_state"] == r["cache_state"]] if len(g) else g
        frac = g["state_file_resident_fraction"].dropna() if "state_file_resident_fraction" in g else []
        wait = g["state_memory_release_wait_s"].dropna() if "state_memory_release_wait_s" in g else []
        # How the state was made: the model file's share in the page cache at send, the wait for memory release.
        row["file in page cache"] = fmt.pct(float(frac.median())) if len(frac) else "—"
        row["memory release wait"] = fmt.duration(float(wait.median())) if len(wait) else "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("cache state") if rows else pd.DataFrame()


def _state_columns(res: "ColdStartResult") -> tuple[tuple[str, str], ...]:
    """The state table's measured columns: e2e, TTFT and the split; where the model thought, the first answer token
    beside TTFT and the decode split into thinking and answer, with the thinking tokens."""
    if not res.thinking:
        return (("e2e_s", "e2e"), ("ttft_s", "TTFT"), ("load_s", "load"), ("prefill_s", "prefill"),
                ("decode_s", "decode"), ("overhead_s", "overhead"))
    return (("e2e_s", "e2e"), ("ttft_s", "TTFT (first thought)"), ("ttfa_s", "first answer token"),
            ("load_s", "load"), ("prefill_s", "prefill"), ("thinking_s", "decode: thinking"),
            ("answer_decode_s", "decode: answer"), ("overhead_s", "overhead"), ("thinking_tokens", "thinking tokens"))


def state_latency(res: "ColdStartResult") -> pd.DataFrame:
    """p50/p90/p99 (with CIs and n) of TTFT, e2e, TPOT and ITL per cache state."""
    return latency_table(measured(res.states), "cache_state", groups=[s for s in res.by_state["cache_state"]])


def before_after(res: "ColdStartResult") -> pd.DataFrame:
    """The before/after table of a tuning guide: the first request with no warmup vs with each strategy, CIs, ratio and verdict
    (the same comparison as ``perfkit compare``: Hodges–Lehmann ratio, Moses CI)."""
    sok = measured(res.strategy_trials)
    if sok.empty:
        return pd.DataFrame()
    rows = []
    for gap, g in sok.groupby("idle_gap_s"):
        base = g[g["strategy"] == "none"]["e2e_s"]
        for strategy, h in g.groupby("strategy", sort=False):
            # At the level and with the minimum effect of the fastest-strategy claim, so the two can't disagree.
            r = (compare_samples(base, h["e2e_s"], "lower", confidence=res.strategy_looks.confidence,
                                 min_effect=MIN_EFFECT) if strategy != "none" and len(base) else None)
            phase = ""
            if strategy == "keep_warm" and "keep_warm_phase" in h and h["keep_warm_phase"].notna().any():
                phase = (f"phase {h['keep_warm_phase'].mean():.2f} of the refresh cycle; "
                         f"{int(h['keep_warm_collision'].astype('boolean').fillna(False).astype(bool).sum())} of {len(h)} "
                         "collided with a refresh")
            rows.append({"idle gap": fmt.duration(gap), "strategy": strategy,
                         "first-request e2e (median [95% CI])": SECONDS.estimate(est(h["e2e_s"])),
                         "model resident at send": f"{h['loaded_at_send'].mean():.0%}",
                         "vs no warmup": r.ratio_text if r else "—",
                         "verdict": r.verdict if r else "—", "keep-warm timing": phase})
    return pd.DataFrame(rows).set_index(["idle gap", "strategy"])


def scheme_a_table(res: "ColdStartResult") -> pd.DataFrame:
    """Scheme A per request delay: restart → ready, time until warm speed, the user's first request."""
    d = measured(res.scheme_a_trials)
    if d.empty:
        return pd.DataFrame()
    rows = []
    for delay, g in d.groupby("scheme_a_delay_s"):
        rows.append({"user request at": f"+{fmt.duration(delay)} after restart", "n": len(g),
                     "restart → ready": SECONDS.estimate(est(g["restart_ready_s"])),
                     "restart → warm (preload done)": SECONDS.estimate(est(g["warm_after_s"])),
                     "preload done before the request": f"{g['preload_done_at_send'].mean():.0%}",
                     "user request e2e": SECONDS.estimate(est(g["e2e_s"])),
                     "user request TTFT": SECONDS.estimate(est(g["ttft_s"]))})
    return pd.DataFrame(rows).set_index("user request at")


def split_table(res: "ColdStartResult") -> pd.DataFrame:
    """Per cold state: the client's split beside the server's (medians with CIs and n)."""
    sp = res.splits
    if sp.empty:
        return pd.DataFrame()
    cols = {"e2e_s": "client e2e", "load_s": "client load", "prefill_s": "client prefill",
            "decode_s": "client decode", "overhead_s": "client overhead", "server_spawn_s": "server: send → spawn",
            "server_init_s": "server: spawn → GPU/backend init", "server_runner_start_s": "server: runner started in",
            "server_ready_to_first_token_s": "server: ready → first token", "server_latency_s": "server latency (log)"}
    if res.thinking:  # the client's first answer token and thinking beside the server's first token
        cols = {**dict(list(cols.items())[:1]), "ttft_s": "client TTFT (first thought)",
                "ttfa_s": "client first answer token", **dict(list(cols.items())[1:4]),
                "thinking_s": "client decode: thinking", "answer_decode_s": "client decode: answer",
                **dict(list(cols.items())[4:])}
        cols.pop("decode_s")
    rows = []
    for state, g in sp.groupby("cache_state", sort=False):
        row = {"cache state": state, "n": len(g)}
        for c, name in cols.items():
            row[name] = ci_cell(est(g[c])) if c in g and g[c].notna().any() else "not in log"
        rows.append(row)
    return pd.DataFrame(rows).set_index("cache state")


def decomposition_chart(res: ColdStartResult):
    """Stacked medians of load / prefill / decode / overhead per cache state (the client's split)."""
    from perfkit.report.charts import Chart, Series

    b = res.by_state
    names = {"load_s": "load", "prefill_s": "prefill", "decode_s": "decode", "thinking_s": "decode: thinking",
             "answer_decode_s": "decode: answer", "overhead_s": "overhead"}
    series = [Series(names[comp], list(b["cache_state"]), [max(0.0, v) if pd.notna(v) else 0.0 for v in b[comp]],
                     text=[f"{names[comp]}: {SECONDS.text(v)} (n={int(n)})" for v, n in zip(b[comp], b["n"])])
              for comp in res.components()]
    parts = ", ".join(names[c] for c in res.components()[:-1]) + " and overhead"
    return Chart("bar", "Where the first request's time goes (medians)", SECONDS.axis_label(),
                 f"Median {parts} of the first request in each cache state, stacked", series, stacked=True)


def timeline_table(res: ColdStartResult, rows: int = 25) -> pd.DataFrame:
    """The first notable lines of the server's log on the run's clock, readable: server start and settings,
    the runner's start, offload and buffers, generation requests (not every line)."""
    tl = res.timeline
    if tl.empty or "t_s" not in tl:
        return pd.DataFrame()
    t = tl.dropna(subset=["t_s"])
    # perfkit's own control calls (/api/ps, /api/show, ...) would crowd out the server's start and the runner's
    t = t[(t["kind"] != "request") | t["what"].str.contains(r"POST /(?:api/(?:generate|chat|embed)|v1/)", regex=True)]
    t = t.head(rows)
    return pd.DataFrame({"at (run clock)": [fmt.duration(v) if v >= 0 else "−" + fmt.duration(-v) for v in t["t_s"]],
                         "event": t["kind"].str.replace("_", " "), "what": t["what"]}).set_index("at (run clock)")


def limit_text(res: ColdStartResult) -> str:
    L, bw = res.limit, res.read_bandwidth or {}
    if L:
        return (f"Model file {fmt.size(L['model_bytes'])}; cold sequential read of the file itself "
                f"{fmt.size(L['read_bandwidth_bytes_s'])}/s → load floor {fmt.duration(L['load_floor_s'])}; measured "
                f"cold-disk load {SECONDS.estimate(L['cold_disk_load_s'])} = **{L['pct_of_limit']:.0f}% of the limit**.")
    return "No load floor: " + (bw.get("unknown_because") or "no cold_disk trials in this run") + "."
