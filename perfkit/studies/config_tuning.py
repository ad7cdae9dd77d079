"""Study 4: server settings × client concurrency. The server restarts for each setting, each
setting is checked to have taken effect, and the best setting per objective is named with its CI."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from perfkit.analysis import stats
from perfkit.core import fmt
from perfkit.client.backends.base import Sampling
from perfkit.measure.cache_states import ensure_warm
from perfkit.compare import compare_estimates, compare_samples
from perfkit.measure.runner import goodput, throughput
from perfkit.core.settings import validate_settings
from perfkit.analysis.requests import ci_cell, est, failures, fmt_s, measured, method_note, negative_overhead_note, noisy_note, per_request_itl
from perfkit.studies.base import StudyContext


def label(setting: dict) -> str:
    return ", ".join(f"{k.removeprefix('OLLAMA_')}={v}" for k, v in validate_settings(setting).items()) or "defaults"


def verify(session, model: str) -> dict[str, Any]:
    """Did the server really start with these settings? Each one confirmed, not applied (and what the
    server runs instead) or unverifiable (and why), from the server's own evidence (controller)."""
    ensure_warm(session.backend, model, session.runner.keep_alive)
    checks = session.control.settings_in_effect(session.settings, model)
    statuses = {k: c.status for k, c in checks.items()}
    out: dict[str, Any] = {"checks": {k: c.as_dict() for k, c in checks.items()},
                           "all_applied": (False if "not applied" in statuses.values() else
                                           None if "unverifiable" in statuses.values() else True)}
    props = getattr(session.control, "props", None)
    if props is not None:
        p = props(model)
        out["total_slots"] = p.get("total_slots")
        out["n_ctx_per_slot"] = (p.get("default_generation_settings") or {}).get("n_ctx")
    elif "OLLAMA_NUM_PARALLEL" in checks and checks["OLLAMA_NUM_PARALLEL"].status == "confirmed":
        out["total_slots"] = int(checks["OLLAMA_NUM_PARALLEL"].effective)
    return out


def run(ctx: StudyContext) -> dict[str, Any]:
    c = ctx.cfg
    with ctx.session(c.settings[0]) as s:
        for i, setting in enumerate(c.settings):
            if i:
                s.restart(setting)
            check = verify(s, c.model)
            ctx.store.event("setting_check", config_index=i, config=label(setting), **check)
            if i == 0:
                ctx.store.event("device", model=c.model, **s.control.device(c.model, s.backend).as_record())
            tags = {"config": label(setting), "config_index": i}
            for conc in c.concurrency:
                s.runner.closed_loop(c.model, conc, c.requests, series=f"cfg{i}/c{conc}",
                                     sampling=Sampling(c.num_predict), prompt_words=c.prompt_words, tags=tags)
            for rate in c.rates_rps:
                s.runner.open_loop(c.model, rate, c.rate_requests, series=f"cfg{i}/r{rate:g}", seed=ctx.params.seed,
                                   arrivals=c.arrivals, sampling=Sampling(c.num_predict),
                                   prompt_words=c.prompt_words, tags=tags)
    ctx.store.finalize()
    return analyze(ctx)


def _throughput_ci(g: pd.DataFrame, window: dict | None = None) -> stats.Estimate:
    """Output tokens/s of one series by batch means over its own token timestamps, inside its
    steady-state window (warm-up and cool-down excluded) where it has one."""
    times = [t for t in g["token_times_ns"] if isinstance(t, (list, tuple, np.ndarray))]
    if window and window.get("steady"):
        return stats.throughput_ci(times, int(window["steady_t0_ns"]), int(window["steady_t1_ns"]))
    return stats.throughput_ci(times, int(g["t_send_ns"].min()), int(g["t_end_ns"].max()))


def series_checks(ev: pd.DataFrame) -> dict[str, dict]:
    """series name → its last completed attempt's steady window and client self-check (series_done event)."""
    if ev.empty or "series" not in ev:
        return {}
    done = ev[ev["kind"] == "series_done"].drop_duplicates("series", keep="last")
    return {r["series"]: r.dropna().to_dict() for _, r in done.iterrows()}


def _client_cell(chk: dict) -> str:
    if not chk or "client_client_bound" not in chk:
        return "not checked"
    if chk["client_client_bound"]:
        return "⚠ " + str(chk.get("client_reason", "client-bound"))
    return (f"ok (loop {chk.get('client_loop_busy', math.nan):.0%} busy, lag p99 "
            f"{fmt.duration(chk.get('client_loop_lag_p99_s'))})")


def _goodput(g: pd.DataFrame, slo) -> float:
    return goodput(g, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s)


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    ev = ctx.store.events()
    checks = ev[ev["kind"] == "setting_check"].drop_duplicates("config_index", keep="last") if len(ev) else pd.DataFrame()
    slo = ctx.cfg.slo
    rows = []
    ok = measured(df)
    sc = series_checks(ev)
    closed = ok[ok["mode"] == "closed"] if "mode" in ok else ok
    for (i, conc), g in closed.groupby(["config_index", "concurrency"]):
        tp = throughput(g)
        sck = sc.get(g["series"].iloc[0], {}) if "series" in g else {}
        ttft50, ttft90, ttft99 = est(g["ttft_s"]), est(g["ttft_s"], "p90"), est(g["ttft_s"], "p99")
        dec, tps = est(g["decode_tok_s"]), _throughput_ci(g, sck)
        chk = checks[checks["config_index"] == i].iloc[0] if len(checks) and (checks["config_index"] == i).any() else None
        all_rows = df[(df.get("config_index") == i) & (df.get("concurrency") == conc)] if len(df) else g
        if "attempt" in all_rows and "series" in all_rows:  # only the completed attempt's rows
            all_rows = all_rows[all_rows["trial_id"].isin(g["trial_id"]) | ~all_rows["ok"].astype(bool)]
        rows.append({"config_index": i, "config": g["config"].iloc[0], "concurrency": conc, "n": len(g),
                     "ttft_p50_s": ttft50.value, "ttft_p50_lo": ttft50.lo, "ttft_p50_hi": ttft50.hi,
                     "ttft_p90": ci_cell(ttft90), "ttft_p99": ci_cell(ttft99), "tpot_p50": ci_cell(est(g["tpot_s"])),
                     "itl_p50": ci_cell(est(per_request_itl(g, "median"))),
                     "decode_tok_s": dec.value, "decode_lo": dec.lo, "decode_hi": dec.hi,
                     "throughput_tok_s": tps.value, "throughput_lo": tps.lo, "throughput_hi": tps.hi,
                     "throughput_method": tps.method, "requests_s": tp["requests_s"],
                     "concurrency_achieved": sck.get("achieved_concurrency", tp["concurrency_achieved"]),
                     "steady_window": bool(sck.get("steady", False)), "client_check": _client_cell(sck),
                     "client_bound": bool(sck.get("client_client_bound", False)),
                     "goodput_rps": _goodput(all_rows, slo),
                     "noisy_requests": int(g.get("res_noisy", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()),
                     "server_rss_max_bytes": g["res_server_rss_bytes_max"].max() if "res_server_rss_bytes_max" in g else np.nan,
                     "setting_applied": None if chk is None else chk.get("all_applied"),
                     "total_slots": None if chk is None else chk.get("total_slots")})
    table = pd.DataFrame(rows)
    dev = ev[ev["kind"] == "device"] if len(ev) and (ev["kind"] == "device").any() else None
    return {"trials": df, "table": table, "rates": rate_table(df, sc, slo), "checks": checks, "best": best(table),
            "manifest": ctx.store.manifest(),
            "failures": failures(df), "slo": slo.model_dump(),
            "device": dev.iloc[-1].dropna().to_dict() if dev is not None else None}


def rate_table(df: pd.DataFrame, sc: dict[str, dict], slo) -> pd.DataFrame:
    """Open-loop sweep: per setting and offered rate, what was achieved, latency from the send and from
    the schedule (the one a user waits), and goodput: requests/s meeting the SLOs, timed from the schedule."""
    if df.empty or "mode" not in df:
        return pd.DataFrame()
    rows = []
    for (i, rate), g_all in df[df["mode"] == "open"].groupby(["config_index", "rate_rps"]):
        chk = sc.get(g_all["series"].iloc[0], {})
        g_all = g_all[g_all["attempt"] == g_all["attempt"].max()] if "attempt" in g_all else g_all
        g = measured(g_all)
        sched = g_all.assign(ttft_s=g_all["ttft_sched_s"])  # goodput against the schedule, not the send
        t50, t99, s99 = est(g["ttft_s"]), est(g["ttft_s"], "p99"), est(g["ttft_sched_s"], "p99")
        rows.append({"config_index": i, "config": g_all["config"].iloc[0], "rate_rps": rate, "n": len(g),
                     "failed": int(len(g_all) - len(g)), "achieved_rate_rps": chk.get("achieved_rate_rps", math.nan),
                     "achieved_concurrency": chk.get("achieved_concurrency", math.nan),
                     "ttft_p50_s": t50.value, "ttft_p50_lo": t50.lo, "ttft_p50_hi": t50.hi,
                     "ttft_p99": ci_cell(t99), "ttft_sched_p99": ci_cell(s99),
                     "send_lag_p99_s": g_all["send_lag_s"].quantile(0.99) if "send_lag_s" in g_all else math.nan,
                     "goodput_rps": goodput(sched, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s),
                     "meets_slo_share": float(((sched["ok"].astype(bool)) & (sched["ttft_s"] <= (slo.ttft_s or math.inf))
                                               & (sched["tpot_s"].fillna(0) <= (slo.tpot_s or math.inf))).mean()),
                     "client_check": _client_cell(chk), "client_bound": bool(chk.get("client_client_bound", False))})
    return pd.DataFrame(rows)


def settings_table(res: dict[str, Any]) -> pd.DataFrame:
    """Per configuration and setting: confirmed / not applied / unverifiable, the effective value and the evidence."""
    rows = []
    for _, c in res["checks"].iterrows():
        for name, chk in (c.get("checks") or {}).items():
            rows.append({"configuration": c["config"], "setting": name, "wanted": chk.get("wanted"),
                         "status": chk.get("status"), "in effect": chk.get("effective") or "—",
                         "evidence": chk.get("evidence", "")})
    return pd.DataFrame(rows).set_index(["configuration", "setting"]) if rows else pd.DataFrame()


def best(table: pd.DataFrame) -> dict[str, dict]:
    if table.empty:
        return {}
    lo_c, hi_c = table["concurrency"].min(), table["concurrency"].max()
    lat_rank = table[table["concurrency"] == lo_c].sort_values("ttft_p50_s")
    thr_rank = table[table["concurrency"] == hi_c].sort_values("throughput_tok_s", ascending=False)
    lat, thr = lat_rank.iloc[0], thr_rank.iloc[0]
    mem = table.groupby("config")["server_rss_max_bytes"].max().sort_values()
    return {
        "latency": {"config": lat["config"], "at_concurrency": int(lo_c), "value": lat["ttft_p50_s"],
                    "lo": lat["ttft_p50_lo"], "hi": lat["ttft_p50_hi"], "n": int(lat["n"]), "metric": "TTFT p50 (s)",
                    **_runner_up(lat_rank, "ttft_p50_lo", "ttft_p50_hi")},
        "throughput": {"config": thr["config"], "at_concurrency": int(hi_c), "value": thr["throughput_tok_s"],
                       "lo": thr["throughput_lo"], "hi": thr["throughput_hi"], "n": int(thr["n"]),
                       "metric": "output tok/s", **_runner_up(thr_rank, "throughput_lo", "throughput_hi")},
        "memory": {"config": mem.index[0], "value": float(mem.iloc[0]), "metric": "peak server RSS (bytes)",
                   "lo": math.nan, "hi": math.nan, "n": int(table[table["config"] == mem.index[0]]["n"].sum())},
    }


def _runner_up(ranked: pd.DataFrame, lo: str, hi: str) -> dict[str, Any]:
    """The second best, and whether the best's CI overlaps it (then this n does not separate them)."""
    if len(ranked) < 2:
        return {}
    a, b = ranked.iloc[0], ranked.iloc[1]
    if any(pd.isna(x) for x in (a[lo], a[hi], b[lo], b[hi])):
        # No interval at this n: nothing says the two differ.
        return {"runner_up": b["config"], "overlaps_runner_up": True, "no_ci": True}
    return {"runner_up": b["config"], "overlaps_runner_up": bool(a[lo] <= b[hi] and b[lo] <= a[hi])}


def baseline_vs_best(res: dict[str, Any]) -> pd.DataFrame:
    """The first setting (the baseline) against the best one per objective, compared as ``perfkit compare``
    does: TTFT by Hodges–Lehmann ratio of the requests (Moses CI), throughput by the two series' batch-means
    CIs (a change only when they are disjoint). Empty when the baseline is the best."""
    t, b = res["table"], res["best"]
    if t.empty or not b:
        return pd.DataFrame()
    base = t.sort_values("config_index")["config"].iloc[0]
    ok = measured(res["trials"])
    rows = []
    L, T = b["latency"], b["throughput"]
    if L["config"] != base:
        ttft = lambda cfg: ok[(ok["config"] == cfg) & (ok["concurrency"] == L["at_concurrency"])]["ttft_s"]  # noqa: E731
        rows.append((f"TTFT at concurrency {L['at_concurrency']}", L["config"],
                     compare_samples(ttft(base), ttft(L["config"]), "lower", kind="duration")))
    if T["config"] != base:
        def series(cfg: str) -> stats.Estimate:
            r = t[(t["config"] == cfg) & (t["concurrency"] == T["at_concurrency"])].iloc[0]
            return stats.Estimate("throughput", r["throughput_tok_s"], r["throughput_lo"], r["throughput_hi"],
                                  int(r["n"]), method=r["throughput_method"])
        rows.append((f"output throughput at concurrency {T['at_concurrency']}", T["config"],
                     compare_estimates(series(base), series(T["config"]), "higher", kind="rate")))
    return pd.DataFrame([{"objective": o, "baseline": base, "best": cfg, "baseline value": r.before,
                          "best value": r.after, "best / baseline": r.ratio_text, "change": r.change_text,
                          "verdict": r.verdict, "why": r.reason} for o, cfg, r in rows]).set_index("objective") \
        if rows else pd.DataFrame()


def _resolved(best: dict) -> str:
    if best.get("no_ci"):
        return (f" At this n there is no confidence interval, so it is not distinguishable from the runner-up "
                f"(**{best['runner_up']}**); add requests to separate them.")
    if best.get("overlaps_runner_up"):
        return (f" Its CI overlaps the runner-up's (**{best['runner_up']}**): at this n the two are not "
                "distinguishable; add requests to separate them.")
    return f" Its CI is clear of the runner-up's ({best['runner_up']})." if best.get("runner_up") else ""


def _rate_conclusion(rt: pd.DataFrame, slo: dict) -> str:
    """The highest offered rate each setting sustained with ≥ 90% of requests inside the SLOs."""
    parts = []
    for cfg, g in rt.sort_values("rate_rps").groupby("config", sort=False):
        okr = g[g["meets_slo_share"] >= 0.9]
        parts.append(f"{cfg}: {fmt.number(okr['rate_rps'].max())} req/s" if len(okr) else
                     f"{cfg}: none of {', '.join(fmt.number(r) for r in g['rate_rps'])} req/s")
    return ("- **Open-loop sweep** (highest offered rate with ≥ 90% of requests meeting TTFT ≤ "
            f"{fmt.duration(slo.get('ttft_s'))} and TPOT ≤ {fmt.duration(slo.get('tpot_s'))}, latency timed from "
            "the schedule): " + "; ".join(parts) + ".")


def conclusions(res: dict[str, Any]) -> str:
    b = res["best"]
    t = res["table"]
    from perfkit.studies.model_size import offload_warnings

    ev = res.get("device")
    lines = (offload_warnings(pd.DataFrame([{"model": ev.get("model"), **ev}])) if ev else []) + [
        "### What the measurements say"]
    if not b:
        return "\n".join(lines + ["- No successful trials.", res["failures"]])
    L, T, M = b["latency"], b["throughput"], b["memory"]
    lines.append(f"- **Latency** (TTFT p50 at concurrency {L['at_concurrency']}): best is **{L['config']}** with "
                 f"{fmt_s(stats.Estimate('median', L['value'], L['lo'], L['hi'], L['n']))}." + _resolved(L))
    lines.append(f"- **Throughput** (output tok/s at concurrency {T['at_concurrency']}): best is **{T['config']}** with "
                 f"{fmt.rate(T['value'])} [{fmt.number(T['lo'])}, {fmt.number(T['hi'])}] ({T['n']} requests)."
                 + _resolved(T))
    for obj, r in baseline_vs_best(res).iterrows():
        lines.append(f"- **Baseline vs best** ({obj}): the first setting **{r['baseline']}** {r['baseline value']} → "
                     f"**{r['best']}** {r['best value']}, {r['best / baseline']}: {r['verdict']} ({r['why']}).")
    slo = res.get("slo") or {}
    g = t[t["concurrency"] == T["at_concurrency"]].sort_values("goodput_rps", ascending=False)
    if len(g):
        lines.append(f"- **Goodput** at concurrency {T['at_concurrency']} (requests/s meeting TTFT ≤ "
                     f"{fmt.duration(slo.get('ttft_s'))} and TPOT ≤ {fmt.duration(slo.get('tpot_s'))}): best is "
                     f"**{g.iloc[0]['config']}** with {fmt.number(g.iloc[0]['goodput_rps'])} requests/s of "
                     f"{fmt.number(g.iloc[0]['requests_s'])}.")
    if not math.isnan(M["value"]):
        lines.append(f"- **Memory**: lowest peak server RSS with **{M['config']}**, {fmt.mib(M['value'])} "
                     f"(the maximum over {M['n']} requests' windows).")
    bound = t[t["client_bound"]] if "client_bound" in t else t.iloc[0:0]
    rt = res.get("rates", pd.DataFrame())
    if len(rt):
        bound = pd.concat([bound, rt[rt["client_bound"]]])
    if len(bound):
        lines.append(f"- ⚠ **The client was the bottleneck** in {len(bound)} series "
                     f"({bound['client_check'].iloc[0]}): their latencies and ITLs are the client's, not the server's.")
    steady = t[t["steady_window"]] if "steady_window" in t else t.iloc[0:0]
    low = steady[steady["concurrency_achieved"] < 0.9 * steady["concurrency"]]
    if len(low):
        lines.append(f"- Achieved concurrency in the steady-state window fell below 90% of the nominal one in "
                     f"{len(low)} series (e.g. {fmt.number(low['concurrency_achieved'].iloc[0])} of "
                     f"{int(low['concurrency'].iloc[0])}): gaps between a client's requests lowered the offered load.")
    if len(t) > len(steady):
        lines.append(f"- {len(t) - len(steady)} series had too few requests per client for a steady-state window; "
                     "their throughput and achieved concurrency span the whole series, ramp and tail included.")
    if len(rt):
        lines.append(_rate_conclusion(rt, slo))
    st = settings_table(res)
    if len(st):
        bad = st[st["status"] == "not applied"]
        unv = st[st["status"] == "unverifiable"]
        if len(bad):
            lines.append("- ⚠ **Settings not applied**: " + "; ".join(
                f"{cfg}: {name} wanted {r['wanted']}, the server runs {r['in effect']} ({r['evidence']})"
                for (cfg, name), r in bad.iterrows()) + ". Results under those labels are for what the server ran.")
        if len(unv):
            lines.append(f"- {len(unv)} setting checks are unverifiable: {unv['evidence'].iloc[0]}.")
        if not len(bad) and not len(unv):
            lines.append("- Every setting was confirmed by the server's own evidence after each restart.")
    for w in (noisy_note(res["trials"]), negative_overhead_note(res["trials"])):
        if w:
            lines.append("- " + w)
    if res["failures"]:
        lines.append("- " + res["failures"])
    lines += ["", method_note(res["manifest"], "Throughput CI: batch means over 5 equal windows of each series' own "
                                               "token timestamps inside its steady-state window (closed loop: from "
                                               "every stream's first response to the first stream running out of "
                                               "work). Client: one asyncio loop, connections reused, connection "
                                               "set-up outside TTFT; each series checks the client itself.")]
    return "\n".join(lines)
