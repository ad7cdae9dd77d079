"""The config tuning study's conclusions: which setting to run and the load it holds, then what the
measurements say."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.core.units import BYTES, REQUESTS_PER_S
from perfkit.analysis import series as S
from perfkit.analysis.capacity import KEPT_UP, SUSTAINED_SHARE
from perfkit.analysis.decisions import TARGET_EFFECT
from perfkit.analysis.models import offload_warnings
from perfkit.analysis.requests import method_note, negative_overhead_note, noisy_note
from perfkit.core import fmt
from perfkit.report.answer import answer_block

from .results import ConfigTuningResult
from .tables import baseline_vs_best, settings_table
from .traffic import speculative_lines, thinking_lines, tool_lines


def slo_text(slo: dict) -> str:
    """'TTFT ≤ 1.50 s and TPOT ≤ 100 ms': the SLOs set, in words."""
    parts = [f"{name} ≤ {fmt.duration(slo[k])}" for k, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"),
                                                                   ("e2e_s", "e2e")) if slo.get(k) is not None]
    return " and ".join(parts) or "no SLO (every successful request counts)"


def rate_conclusion(rt: pd.DataFrame, slo: dict) -> str:
    """Each setting's limit as the sweep bracketed it: the highest rate shown sustained and the lowest above it
    shown not sustained; a lower or upper bound where the rates tried did not bracket it; the rates whose trend
    could not tell either way, inside the bracket, named."""
    parts = []
    order = ["config_index", "rate_rps"] if "config_index" in rt else ["rate_rps"]  # settings as the parameters list them
    for cfg, g in rt.sort_values(order).groupby("config", sort=False):
        ok = g["sustained"].astype(bool)
        no = g["not_sustained"].astype(bool) if "not_sustained" in g else ~ok
        unsure = g[~ok & ~no]
        top = g[ok]["rate_rps"].max() if ok.any() else None
        above = g[no & (g["rate_rps"] > top)] if top is not None else g[no]
        clash = unsure[unsure["contradiction"].astype(bool)] if "contradiction" in unsure else unsure.iloc[0:0]
        vague = unsure.drop(clash.index)
        cant = "".join(f"; at {fmt.number(r['rate_rps'])} req/s {r['contradiction']}" for _, r in clash.iterrows())
        if len(vague):
            cant += (f"; at {', '.join(fmt.number(r) for r in vague['rate_rps'])} req/s the data could not "
                     f"tell whether the server kept up (measured up to {int(vague['n'].max())} requests)")
        if top is None and not len(above):
            parts.append(f"{cfg}: no rate tried could be told sustained or not{cant}")
        elif top is None:
            parts.append(f"{cfg}: below {fmt.number(above['rate_rps'].min())} req/s (none of "
                         f"{', '.join(fmt.number(r) for r in g['rate_rps'])} req/s was sustained){cant}")
        elif len(above):
            nxt = above.iloc[0]
            why = (f"{fmt.pct(nxt['meets_slo_share'])} inside the SLOs" if nxt["meets_slo_share"] < SUSTAINED_SHARE
                   else f"the server fell behind: while all its slots were busy it completed about "
                        f"{fmt.number(nxt['kept_up'])}× the rate offered, and even the top of that estimate's "
                        f"{S.TREND_CONFIDENCE:.0%} interval is below the rate"
                   if str(nxt.get("trend_method", "")).startswith(S.SATURATED) else
                   f"the server fell behind: its latency grew through the series, as a queue does when the "
                   f"server serves about {fmt.number(nxt['kept_up'])}× the rate offered, and even the top of "
                   "that estimate's interval is below 0.9")
            parts.append(f"{cfg}: {fmt.number(top)} req/s sustained, {fmt.number(nxt['rate_rps'])} req/s not ({why})"
                         + cant)
        else:
            parts.append(f"{cfg}: at least {fmt.number(top)} req/s (every rate tried was sustained or could not be "
                         f"told; its limit lies above: add higher rates or rate_search_steps){cant}"
                         if len(unsure) else
                         f"{cfg}: at least {fmt.number(top)} req/s (every rate tried was sustained; its limit lies "
                         "above: add higher rates or rate_search_steps)")
    saturated = "trend_method" in rt and rt["trend_method"].astype(str).str.startswith(S.SATURATED).all()
    kept = ("the server kept up: its capacity while every slot was busy (completions ÷ that time, an exact interval) "
            f"reaches the rate at the bottom of its {S.KEPT_UP_CAPACITY_CONFIDENCE:.0%} interval, or no request ever "
            f"waited for a slot; not sustained when the share is lower or the top of the capacity's "
            f"{S.TREND_CONFIDENCE:.0%} interval is below the rate" if saturated else
            f"its latency does not grow through the series faster than a server at {KEPT_UP:.0%} of the rate would "
            f"make it; not sustained when the share is lower or the trend's {S.TREND_CONFIDENCE:.0%} interval shows "
            "such growth")
    return (f"- **Open-loop sweep** (a rate is sustained when ≥ {SUSTAINED_SHARE:.0%} of its requests meet "
            f"{slo_text(slo)}, latency timed from the schedule, failed requests counted as misses, and {kept}; "
            f"{_n_text(rt)}): "
            + "; ".join(parts) + ".")


def _n_text(rt: pd.DataFrame) -> str:
    """How long each rate ran, which bounds what the sweep can see: a queue that grows too slowly to break the
    SLOs within that many requests passes."""
    n = sorted({int(x) for x in rt["n"].dropna()}) if "n" in rt else []
    what = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else "?"
    return f"{what} requests per rate: a queue too slow to break the SLOs within them is not seen"


def _closed_span_s(trials: pd.DataFrame) -> float:
    """Seconds the closed-loop series took, all settings together (what "more requests" would cost again)."""
    if trials.empty or "mode" not in trials:
        return math.nan
    closed = S.last_attempt(trials[trials["mode"] == "closed"])
    if closed.empty:
        return math.nan
    spans = closed.groupby("series").apply(lambda g: (g["t_end_ns"].max() - g["t_send_ns"].min()) * 1e-9,
                                           include_groups=False)
    return float(spans.sum())


def answer(res: ConfigTuningResult) -> list[str]:
    """Which setting to run and how much load it holds, as the data support it (at most three sentences)."""
    b, t = res.best, res.table
    if not b or t.empty:
        return []
    base = t.sort_values("config_index")["config"].iloc[0]
    out = []
    T, L = b.get("throughput"), b.get("latency")
    pick = None
    for x, what in ((T, "throughput"), (L, "TTFT")):
        if x and x["claim"].called:
            f = res.figures.get(f"config_tuning/{'throughput' if what == 'throughput' else 'ttft'}/{x['config']}/"
                                f"{x['at_concurrency']}")
            vs = x["claim"].rows.get(base)
            gain = f", {vs.change_text} against the baseline **{base}**" if vs is not None else " (it is the baseline)"
            out.append(f"Run **{x['config']}** for {what}: {f.link() if f else fmt.NA} at {x['at_concurrency']} "
                       f"client{'s' if x['at_concurrency'] != 1 else ''}{gain}.")
            pick = pick or x["config"]
    if not out:
        span, target, parts = _closed_span_s(res.trials), f"{TARGET_EFFECT:.0%}", []
        for x, what in ((T, "throughput"), (L, "TTFT")):
            if not x:
                continue
            need = x["claim"].more_needed()
            if not math.isfinite(need):
                parts.append(f"for {what}, more requests per series would separate them")
            elif need <= 1.05:
                parts.append(f"for {what}, a {target} difference would have been separated, so they differ by less")
            else:
                parts.append(f"for {what}, about {math.ceil(need)}× the requests"
                             + (f" (≈ {fmt.duration(span * (need - 1))} more measuring)" if math.isfinite(span) else "")
                             + f" would separate a {target} difference")
        out.append("At this n no setting is separable from the others" + (": " + "; ".join(parts) if parts else "")
                   + ".")
    rt = res.rates
    who = pick or base
    if len(rt) and (rt["config"] == who).any():
        g = rt[rt["config"] == who].sort_values("rate_rps")
        ok, no = g[g["sustained"].astype(bool)], g[g["not_sustained"].astype(bool)] if "not_sustained" in g else g.iloc[0:0]
        top = ok["rate_rps"].max() if len(ok) else None
        f = res.figures.get(f"config_tuning/sustained_rate/{who}")
        above = no[no["rate_rps"] > top]["rate_rps"].min() if top is not None and len(no) else None
        slo = slo_text(res.slo or {})
        if top is not None:
            out.append(f"**{who}** holds {f.link() if f else REQUESTS_PER_S.text(top)} inside {slo}"
                       + (f" and not {REQUESTS_PER_S.text(above)}." if above is not None and math.isfinite(above)
                          else " (its limit lies above the rates tried)."))
        elif len(no):
            out.append(f"**{who}** held none of the rates tried inside {slo} (the lowest: "
                       f"{REQUESTS_PER_S.text(no['rate_rps'].min())}).")
    bad = [c for _, c in res.checks.iterrows() if c.get("all_applied") is False] if len(res.checks) else []
    if bad:
        out.append(f"⚠ {len(bad)} setting{'s were' if len(bad) != 1 else ' was'} not applied as asked (see below).")
    return out


def conclusions(res: ConfigTuningResult) -> str:
    b, t = res.best, res.table
    ev = res.device
    lines = (offload_warnings(pd.DataFrame([{"model": ev.get("model"), **ev}])) if ev else []) + [
        answer_block(answer(res), res.failures) + "### What the measurements say"]
    if not b:
        return "\n".join(lines + ["- No successful trials: nothing to conclude.", res.failures])
    L, T, M = b.get("latency"), b.get("throughput"), b["memory"]
    if L:
        lines.append(f"- **Latency** (TTFT p50 at concurrency {L['at_concurrency']}, steady-state window): "
                     + L["claim"].sentence("TTFT") + f" Its TTFT: {L['text']}.")
    if T:
        lines.append(f"- **Throughput** (output tok/s at concurrency {T['at_concurrency']}): "
                     + T["claim"].sentence("throughput") + f" Its throughput: {T['text']}.")
    for obj, r in baseline_vs_best(res).iterrows():
        lines.append(f"- **Baseline vs the leader** ({obj}): the first setting **{r['baseline']}** {r['baseline value']} → "
                     f"**{r['best']}** {r['best value']}, {r['best / baseline']}: {r['verdict']} ({r['why']}).")
    T = T or L
    slo = res.slo or {}
    g = t[(t["concurrency"] == T["at_concurrency"]) & (t["n"] > 0)].sort_values("goodput_rps", ascending=False)
    if len(g):
        lines.append(f"- **Goodput** at concurrency {T['at_concurrency']} in the closed loop (requests/s meeting "
                     f"{slo_text(slo)}; one series each, no CI, so no ranking): "
                     + "; ".join(f"**{r['config']}** {fmt.number(r['goodput_rps'])} of {fmt.number(r['requests_s'])}"
                                 for _, r in g.iterrows()) + ".")
    if not math.isnan(M["value"]):
        lines.append(f"- **Memory**: lowest peak server RSS with **{M['config']}**, {BYTES.text(M['value'])} "
                     f"(the largest sample over {M['n']} requests' windows; one reading per setting, no CI).")
    lines += speculative_lines(res) + thinking_lines(res) + tool_lines(res)
    lines += _series_lines(t)
    if res.retries:
        lines.append(f"- {res.retries} request(s) were resent once on a fresh connection because the server had "
                     "closed the kept-alive one before answering; each kept its first attempt's error.")
    rt = res.rates
    if len(rt):
        lines.append(rate_conclusion(rt, slo))
    else:
        lines.append("- No open-loop sweep in these parameters (`rates_rps` is empty): the sustained request rate "
                     "was not measured.")
    lines += _settings_lines(res)
    for w in (noisy_note(res.trials), negative_overhead_note(res.trials)):
        if w:
            lines.append("- " + w)
    if res.failures:
        lines.append("- " + res.failures)
    lines += ["", method_note(res.manifest, "Latency percentiles over the requests sent inside each series' "
                                            "steady-state window (closed loop: from every stream's first response to "
                                            "the first stream running out of work; the start-up burst is shown "
                                            "apart); TTFT p99 counts failed requests as beyond the limit. Throughput: "
                                            "server-counted output tokens in that window, CI by batch means over 5 "
                                            "windows. Client: one asyncio loop, connections reused, connection set-up "
                                            "outside TTFT; each series checks the client itself.")]
    return "\n".join(lines)


def _series_lines(t: pd.DataFrame) -> list[str]:
    """What may move the closed loops' figures: the client's own timing, a busy client, a concurrency the clients
    did not reach, a series too short for a steady window."""
    lines: list[str] = []
    moved = t[t.get("client_moves", pd.Series(False, index=t.index)).astype("boolean").fillna(False).astype(bool)] if len(t) else t
    if len(moved):
        lines.append(f"- ⚠ **The client's own timing error can move figures** in {len(moved)} series: "
                     f"{moved['client_check'].iloc[0]}.")
    bound = t[t["client_bound"] & ~t.get("client_moves", pd.Series(False, index=t.index)).astype("boolean").fillna(False).astype(bool)] \
        if len(t) else t
    if len(bound):
        lines.append(f"- The client was busy in {len(bound)} series ({bound['client_check'].iloc[0]}), too little to "
                     "change those figures.")
    steady = t[t["steady_window"]] if "steady_window" in t else t.iloc[0:0]
    low = steady[steady["concurrency_achieved"] < 0.9 * steady["concurrency"]]
    if len(low):
        lines.append(f"- Achieved concurrency in the steady-state window fell below 90% of the nominal one in "
                     f"{len(low)} series (e.g. {fmt.number(low['concurrency_achieved'].iloc[0])} of "
                     f"{int(low['concurrency'].iloc[0])}): gaps between a client's requests lowered the offered load.")
    if len(t) > len(steady):
        lines.append(f"- {len(t) - len(steady)} series had too few requests per client for a steady-state window; "
                     "their figures span the whole series, start-up burst and tail included.")
    return lines


def _settings_lines(res: ConfigTuningResult) -> list[str]:
    """Whether each setting was applied as asked, by the server's own evidence."""
    lines: list[str] = []
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
    return lines
