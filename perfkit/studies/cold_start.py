"""Study 1: why is the first request slow, and which warmup fixes it.

First-request latency in each cache state, decomposed into load / prefill / decode / overhead;
the warmup strategies and the first request a user sees after an idle gap; load time against
its physical limit (file bytes / the disk's measured read bandwidth).
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

from .. import pagecache, stats
from ..backends.base import Sampling
from ..coldstart import user_first_request
from ..runner import Trial
from ..prompts import prompt_for
from ._common import est, failures, fmt_s, fmt_x, measured, method_note
from ._context import StudyContext

COMPONENTS = ("load_s", "prefill_s", "decode_s", "overhead_s")


def plan(ctx: StudyContext) -> list[Trial]:
    c = ctx.cfg
    rng = random.Random(ctx.params.seed)
    trials = [Trial("state/warmup0", c.model, "warm", 0, True, "warm", c.prompt_words, Sampling(c.num_predict))]
    for rep in range(c.reps):
        order = list(c.states)
        rng.shuffle(order)
        trials += [Trial(f"state/{s}/rep{rep}", c.model, s, rep, False, s, c.prompt_words, Sampling(c.num_predict),
                         tags={"order_seed": ctx.params.seed}) for s in order]
    return trials


def run(ctx: StudyContext) -> dict[str, Any]:
    c = ctx.cfg
    keep_alive = c.keep_alive_s
    settings = {"OLLAMA_KEEP_ALIVE": keep_alive} if ctx.params.backend.kind == "embedded" else {}
    with ctx.session(settings) as s:
        s.runner.run(plan(ctx), desc="cache states")
        _strategies(ctx, s, keep_alive)
        path = s.backend.model_facts(c.model).path
        if path and "read_bandwidth" not in set(ctx.store.events().get("kind", pd.Series(dtype=str))):
            s.backend.unload(c.model)
            bw, secs = pagecache.read_bandwidth_bytes_s(path)
            ctx.store.event("read_bandwidth", path=path, bytes_s=bw, seconds=secs)
    ctx.store.finalize()
    return analyze(ctx)


def _strategies(ctx: StudyContext, s, keep_alive: float) -> None:
    c = ctx.cfg
    done = ctx.store.done_ids()
    rng = random.Random(ctx.params.seed + 1)
    interval = c.keep_warm_interval_s or keep_alive / 2
    for gap in c.idle_gaps_s:
        for rep in range(c.strategy_reps):
            order = list(c.strategies)
            rng.shuffle(order)
            for strategy in order:
                tid = f"strategy/{strategy}/gap{gap:g}/rep{rep}"
                if tid in done:
                    continue
                fr = user_first_request(s.backend, c.model, strategy, idle_gap_s=gap, prompt=prompt_for(tid, c.prompt_words),
                                        sampling=Sampling(c.num_predict), keep_warm_interval_s=interval,
                                        keep_alive=keep_alive if ctx.params.backend.kind == "ollama" else None,
                                        timeout_s=ctx.params.timeouts.request_s)
                s.runner.record(fr.record, trial_id=tid, strategy=strategy, idle_gap_s=gap, rep=rep, warmup=False,
                                keep_alive_s=keep_alive, keep_warm_interval_s=interval,
                                loaded_at_send=fr.loaded_at_send, keep_warm_refreshes=fr.keep_warm_refreshes,
                                variant=strategy, cache_state="warm" if fr.loaded_at_send else "cold_memory")


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    states = df[df["trial_id"].str.startswith("state/")] if len(df) else df
    strat = df[df["trial_id"].str.startswith("strategy/")] if len(df) else df
    ok = measured(states)
    by_state = []
    for state in ctx.cfg.states:
        g = ok[ok["cache_state"] == state]
        row = {"cache_state": state, "n": len(g)}
        for m in ("e2e_s", "ttft_s", *COMPONENTS):
            e = est(g[m]) if m in g else est([])
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = e.value, e.lo, e.hi
        by_state.append(row)
    by_state = pd.DataFrame(by_state)
    warm = ok[ok["cache_state"] == "warm"]["e2e_s"]
    ratios = {st: stats.ratio(ok[ok["cache_state"] == st]["e2e_s"], warm)
              for st in ctx.cfg.states if st != "warm"}
    sok = measured(strat)
    strategies = []
    for (strategy, gap), g in sok.groupby(["strategy", "idle_gap_s"], sort=False):
        e = est(g["e2e_s"])
        strategies.append({"strategy": strategy, "idle_gap_s": gap, "n": len(g), "e2e_s": e.value, "e2e_s_lo": e.lo,
                           "e2e_s_hi": e.hi, "load_s": est(g["load_s"]).value,
                           "loaded_at_send": float(g["loaded_at_send"].mean())})
    strategies = pd.DataFrame(strategies)
    ev = ctx.store.events()
    limit = None
    if len(ev) and (ev["kind"] == "read_bandwidth").any():
        bw = ev[ev["kind"] == "read_bandwidth"].iloc[-1]
        facts = ctx.store.manifest().get("models", {}).get(ctx.cfg.model, {})
        size = facts.get("size_bytes")
        cold = ok[ok["cache_state"] == "cold_disk"]["load_s"]
        if size and len(cold):
            floor = size / bw["bytes_s"]
            e = est(cold)
            limit = {"model_bytes": size, "read_bandwidth_bytes_s": bw["bytes_s"], "load_floor_s": floor,
                     "cold_disk_load_s": e, "pct_of_limit": 100 * floor / e.value if e.value else float("nan")}
    return {"trials": df, "states": states, "by_state": by_state, "ratios": ratios, "strategy_trials": strat,
            "strategies": strategies, "limit": limit, "manifest": ctx.store.manifest(), "model": ctx.cfg.model,
            "failures": failures(df)}


def before_after(res: dict[str, Any]) -> pd.DataFrame:
    """The seed guide's table: the first request with no warmup vs with each strategy, CIs and ratio."""
    sok = measured(res["strategy_trials"])
    if sok.empty:
        return pd.DataFrame()
    rows = []
    for gap, g in sok.groupby("idle_gap_s"):
        base = g[g["strategy"] == "none"]["e2e_s"]
        for strategy, h in g.groupby("strategy", sort=False):
            r = stats.ratio(h["e2e_s"], base) if strategy != "none" and len(base) else None
            rows.append({"idle gap": f"{gap:g} s", "strategy": strategy,
                         "first-request e2e (median [95% CI])": fmt_s(est(h["e2e_s"])),
                         "model resident at send": f"{h['loaded_at_send'].mean():.0%}",
                         "vs no warmup": fmt_x(r) if r else "—"})
    return pd.DataFrame(rows)


def conclusions(res: dict[str, Any]) -> str:
    b = res["by_state"].set_index("cache_state")
    ok = measured(res["states"])
    lines = [f"### What the measurements say ({res['model']})"]
    if "warm" in b.index and b.loc["warm", "n"]:
        w = est(ok[ok["cache_state"] == "warm"]["e2e_s"])
        lines.append(f"- A **warm** request takes {fmt_s(w)} end to end.")
    for st, r in res["ratios"].items():
        g = ok[ok["cache_state"] == st]
        if g.empty:
            continue
        e2e, load = est(g["e2e_s"]), est(g["load_s"])
        if st == "warm_cached":
            lines.append(f"- Repeating a prompt the server has cached (**warm_cached**) takes {fmt_s(e2e)}: "
                         f"{fmt_x(r)} the warm median; its prefill is {fmt_s(est(g['prefill_s']))}.")
            continue
        share = load.value / e2e.value if e2e.value else float("nan")
        lines.append(f"- From **{st}**, the first request takes {fmt_s(e2e)}: {fmt_x(r)} the warm median; "
                     f"loading the model is {fmt_s(load)}, {share:.0%} of it.")
    if res["limit"]:
        L = res["limit"]
        lines.append(f"- Load floor: {L['model_bytes'] / 1e6:.0f} MB at the measured {L['read_bandwidth_bytes_s'] / 1e6:.0f} MB/s "
                     f"cold read = {L['load_floor_s'] * 1e3:.0f} ms; the cold-disk load ({fmt_s(L['cold_disk_load_s'])}) "
                     f"runs at {L['pct_of_limit']:.0f}% of that limit, so "
                     + ("reading the file is most of the load." if L["pct_of_limit"] > 50
                        else "most of the load is not disk reading (allocation, set-up, warm-up)."))
    sok = measured(res["strategy_trials"])
    for gap, g in sok.groupby("idle_gap_s"):
        med = {s: est(h["e2e_s"]) for s, h in g.groupby("strategy")}
        best = min(med, key=lambda s: med[s].value)
        worst = max(med, key=lambda s: med[s].value)
        ka = g["keep_alive_s"].iloc[0]
        lines.append(f"- After an idle gap of {gap:g} s (keep-alive {ka:g} s), the first request is fastest with "
                     f"**{best}** ({fmt_s(med[best])}) and slowest with **{worst}** ({fmt_s(med[worst])}); "
                     f"the model was resident at send in {g[g['strategy'] == best]['loaded_at_send'].mean():.0%} "
                     f"of '{best}' trials and {g[g['strategy'] == worst]['loaded_at_send'].mean():.0%} of '{worst}' ones.")
    if res["failures"]:
        lines.append("- " + res["failures"])
    lines.append("")
    lines.append(method_note(res["manifest"]))
    return "\n".join(lines)
