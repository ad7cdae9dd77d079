"""The cold start study's analysis, from recorded data only: each cache state's first request and its split,
the warmup strategies' claims, scheme A, the load against its floor, and the server's own account from its log."""

from __future__ import annotations

from typing import Any

import pandas as pd

from perfkit.core.events import DeviceFound, ReadBandwidth, SchemeASkipped, StateSkipped, last_of
from perfkit.analysis import figures as F, stats, timeline
from perfkit.analysis.decisions import best_of
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.models import resource_figures
from perfkit.analysis.requests import attempted, est, failures, measured, per_request_itl, thought
from perfkit.analysis.series import censored
from perfkit.core import fmt
from perfkit.core.records import CACHE_STATES
from perfkit.measure.sequential import looks_taken
from perfkit.studies.base import StudyContext

from .params import ColdStartParams
from .results import COLD_STATES, COMPONENTS, THINKING_COLUMNS, ColdStartResult


def _workload(c: ColdStartParams) -> dict[str, Any]:
    think = {} if c.think is None else {"think": str(c.think).lower()}  # thinking on and off don't compare
    return {"prompt_words": c.prompt_words, "num_predict": c.num_predict, **think}


def with_answer_decode(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``answer_decode_s``: the decode left once the thinking is taken out of it (decode − thinking,
    never below 0), the whole decode for a request that did not think. Thinking and answer then split the decode.
    Rows none of which thought are returned as they are."""
    if rows.empty or "decode_s" not in rows or not thought(rows):
        return rows
    decode = pd.to_numeric(rows["decode_s"], errors="coerce")
    think = pd.to_numeric(rows["thinking_s"], errors="coerce") if "thinking_s" in rows else decode * 0
    return rows.assign(answer_decode_s=(decode - think.fillna(0)).clip(lower=0))


def analyze(ctx: StudyContext) -> ColdStartResult:
    c = ctx.cfg
    df = ctx.store.trials()
    ids = df["trial_id"] if len(df) else pd.Series(dtype=str)
    states = df[ids.str.startswith("state/")] if len(df) else df
    strat = df[ids.str.startswith("strategy/")] if len(df) else df
    schemea = df[ids.str.startswith("scheme_a/")] if len(df) else df
    ok = with_answer_decode(measured(states))
    thinking = thought(ok)
    by_state = []
    for state in c.states:
        g = ok[ok["cache_state"] == state]
        row = {"cache_state": state, "n": len(g)}
        for m in ("e2e_s", "ttft_s", *COMPONENTS, *(THINKING_COLUMNS if thinking else ())):
            e = est(g[m]) if m in g else est([])
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = e.value, e.lo, e.hi
        by_state.append(row)
    by_state = pd.DataFrame(by_state)
    warm = ok[ok["cache_state"] == "warm"]["e2e_s"] if len(ok) else pd.Series(dtype=float)
    ratios = {st: stats.ratio(ok[ok["cache_state"] == st]["e2e_s"], warm) for st in c.states
              if st != "warm" and len(ok)}
    sok = measured(strat)
    strategies = []
    if len(sok):
        for (strategy, gap), g in sok.groupby(["strategy", "idle_gap_s"], sort=False):
            e = est(g["e2e_s"])
            strategies.append({"strategy": strategy, "idle_gap_s": gap, "n": len(g), "e2e_s": e.value,
                               "e2e_s_lo": e.lo, "e2e_s_hi": e.hi, "load_s": est(g["load_s"]).value,
                               "loaded_at_send": float(g["loaded_at_send"].mean())})
    ev = ctx.store.events()
    log = ctx.params.backend.server_log
    acc = timeline.load_account(ctx.store.dir, ev, trials=df, tz=log.tz if log else None)
    t0 = int(df["t_send_ns"].min()) if len(df) and "t_send_ns" in df and df["t_send_ns"].notna().any() else None
    cold = ok[ok["cache_state"].isin(COLD_STATES)] if len(ok) else ok
    sa_ok = with_answer_decode(measured(schemea))
    split = timeline.splits(acc, pd.concat([cold, sa_ok])) if len(cold) or len(sa_ok) else pd.DataFrame()
    device = last_of(ev, DeviceFound)
    figs = FigureSet(_figures(c, ok, sok, sa_ok, ratios, device, attempted(states)) +
                     (_thinking_figures(c, ok) if thinking else []))
    _pairs(figs, sok, sa_ok, c.looks().confidence)
    return ColdStartResult(
        study="cold_start", figures=figs, trials=df, manifest=ctx.store.manifest(), failures=failures(df),
        model=c.model, states=states, by_state=by_state, ratios=ratios, strategy_trials=strat,
        strategies=pd.DataFrame(strategies), scheme_a_trials=schemea, strategy_looks=c.looks(),
        strategy_looks_taken=looks_taken(ev, "warmup strategies"), limit=load_limit(ctx, ok, ev), device=device,
        read_bandwidth=last_of(ev, ReadBandwidth), scheme_a_skipped=last_of(ev, SchemeASkipped),
        state_skipped=last_of(ev, StateSkipped), account=acc, timeline=timeline.timeline_frame(acc, t0),
        splits=split, samples=ctx.store.samples(), thinking=thinking, think=c.think)


def _pairs(figs: FigureSet, sok: pd.DataFrame, sa: pd.DataFrame, confidence: float) -> None:
    """The before/after rows: the first request after an idle gap with no warmup against the fastest strategy,
    and the first request after a restart against one with the model preloaded at start (scheme A)."""
    for gap, fs, claim in strategy_claims(sok, confidence, figs):
        if "none" in fs and claim.best != "none":
            figs.pair(F.Pair(f"first request after {fmt.duration(gap)} idle", fs["none"].key, fs[claim.best].key,
                             "no warmup", f"warmup: {claim.best}"))
    if len(sa) and "scheme_a_delay_s" in sa:
        delay = float(sa["scheme_a_delay_s"].max())
        figs.pair(F.Pair("first request after a restart", "cold_start/e2e/cold_server",
                         f"cold_start/e2e/user request/{delay:g}", "restart, no preload",
                         f"restart with preload at start, request {fmt.duration(delay)} later"))


def _figures(c: ColdStartParams, ok: pd.DataFrame, sok: pd.DataFrame, sa: pd.DataFrame,
             ratios: dict[str, stats.Estimate], device: dict | None,
             tried: pd.DataFrame | None = None) -> list[F.Figure | None]:
    """The figures this study stands by: first-request e2e per cache state (the cold and warm start of a before/after table),
    load per cold state, warm TTFT, ITL and decode speed, resident memory, energy and GPU use, each warmup
    strategy after each idle gap, scheme A per delay, and cold ÷ warm."""
    wl, m = _workload(c), c.model
    out: list[F.Figure | None] = []
    present = set(ok["cache_state"]) if len(ok) else set()
    cold_headline = next((st for st in ("cold_server", "cold_memory", "cold_disk") if st in present), None)
    for state in [s for s in CACHE_STATES if s in present]:
        g = ok[ok["cache_state"] == state]
        w = {"state": state}
        out.append(F.per_request("cold_start", "e2e", g, "e2e_s", where=w, model=m, workload=wl,
                                 headline="cold start" if state == cold_headline else
                                 "warm start" if state == "warm" else ""))
        if state in COLD_STATES:
            out.append(F.per_request("cold_start", "load", g, "load_s", where=w, model=m, workload=wl))
        if state != "warm" and state in ratios:
            out.append(F.from_estimate("cold_start", "cold_over_warm", ratios[state], where=w, model=m, workload=wl))
        if tried is not None and len(tried) and "cache_state" in tried:
            every = tried[tried["cache_state"] == state]
            out.append(F.failed_share("cold_start", every, where=w, model=m, workload=wl))
            if state == "warm":  # the tail a user meets after warm-up, failures beyond the limit
                out += [F.per_request("cold_start", tag, every, lambda r, c=col: censored(r, c), where=w, model=m,
                                      workload=wl) for tag, col in (("ttft_p99", "ttft_s"), ("e2e_p99", "e2e_s"))]
    warm = ok[ok["cache_state"] == "warm"] if len(ok) else ok
    w = {"state": "warm"}
    out += [F.per_request("cold_start", "ttft", warm, "ttft_s", where=w, model=m, workload=wl),
            # One value per request (its median gap per token): gaps within a request are not independent.
            F.per_request("cold_start", "itl", warm, lambda r: per_request_itl(r, "median"), where=w, model=m,
                          workload=wl),
            F.per_request("cold_start", "decode_rate", warm, "decode_tok_s", where=w, model=m, workload=wl),
            *resource_figures("cold_start", warm, w, m, wl),
            F.reading("cold_start", "memory", (device or {}).get("model_memory_bytes"), where={"model": m}, model=m,
                      headline="memory")]
    if len(sok) and {"strategy", "idle_gap_s"} <= set(sok):
        for (strategy, gap), g in sok.groupby(["strategy", "idle_gap_s"], sort=False):
            out.append(F.per_request("cold_start", "e2e", g, "e2e_s", where={"strategy": strategy, "gap_s": f"{gap:g}"},
                                     model=m, workload={**wl, "keep_alive_s": c.keep_alive_s}))
    if len(sa) and "scheme_a_delay_s" in sa:
        for delay, g in sa.groupby("scheme_a_delay_s"):
            out.append(F.per_request("cold_start", "e2e", g, "e2e_s", where={"scheme_a": "user request",
                                                                              "delay_s": f"{delay:g}"},
                                     model=m, workload=wl))
    return out


def _thinking_figures(c: ColdStartParams, ok: pd.DataFrame) -> list[F.Figure | None]:
    """Per cache state, where the model thought: the first answer token (what a user waits for; TTFT is the first
    thought), the thinking time and the thinking tokens."""
    wl, m = _workload(c), c.model
    return [F.per_request("cold_start", tag, ok[ok["cache_state"] == state], column, where={"state": state}, model=m,
                          workload=wl)
            for state in [s for s in CACHE_STATES if s in set(ok["cache_state"])]
            for tag, column in (("ttfa", "ttfa_s"), ("thinking_time", "thinking_s"),
                                ("thinking_tokens", "thinking_tokens"))]


def load_limit(ctx: StudyContext, ok: pd.DataFrame, ev: pd.DataFrame) -> dict | None:
    """The cold-disk load against its floor: file bytes / the disk's measured cold read bandwidth."""
    bw = last_of(ev, ReadBandwidth)
    if not bw or "bytes_s" not in bw or ok.empty:
        return None
    size = bw.get("size_bytes") or ctx.store.manifest().get("models", {}).get(ctx.cfg.model, {}).get("size_bytes")
    cold = ok[ok["cache_state"] == "cold_disk"]["load_s"]
    if not size or not len(cold):
        return None
    floor = size / bw["bytes_s"]
    e = est(cold)
    return {"model_bytes": size, "read_bandwidth_bytes_s": bw["bytes_s"], "load_floor_s": floor,
            "cold_disk_load_s": e, "pct_of_limit": 100 * floor / e.value if e.value else float("nan")}


def strategy_claims(sok: pd.DataFrame, confidence: float, figures: FigureSet | None = None
                    ) -> list[tuple[float, dict[str, F.Figure], Any]]:
    """Per idle gap (shortest first): each warmup strategy's first-request e2e figure (from ``figures``, else
    from the trials ``sok``) and the tested claim of the fastest at ``confidence``
    (:func:`perfkit.analysis.decisions.best_of`)."""
    out = []
    for gap, g in sok.groupby("idle_gap_s") if len(sok) else ():
        figs = {}
        for strategy in dict.fromkeys(g["strategy"]):
            fig = (figures.get(f"cold_start/e2e/{strategy}/{gap:g}") if figures is not None else
                   F.per_request("cold_start", "e2e", g[g["strategy"] == strategy], "e2e_s",
                                 where={"strategy": strategy, "gap_s": f"{gap:g}"}))
            if fig is not None:
                figs[strategy] = fig
        if figs:
            out.append((gap, figs, best_of(figs, confidence=confidence)))
    return out
