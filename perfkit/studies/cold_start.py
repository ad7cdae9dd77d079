"""Study 1: why is the first request slow, and which warmup fixes it.

First-request latency in each cache state (server restarted, cold disk, cold memory, first request
after a load, warm, cached prompt), decomposed into load / prefill / decode / overhead by the client
and into spawn / init / runner start / first token by the server's own log; the warmup strategies
and the first request a user sees after an idle gap; scheme A (restart, preload at start); load time
against its physical limit (file bytes / the disk's measured read bandwidth).
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

from perfkit.core import fmt
from perfkit.servers import pagecache
from perfkit.analysis import stats
from perfkit.analysis import timeline
from perfkit.client.backends.base import Sampling
from perfkit.measure.cache_states import scheme_a, user_first_request
from perfkit.compare import compare_samples
from perfkit.servers.control.base import Unknown
from perfkit.measure.runner import Trial
from perfkit.analysis.requests import ci_cell, est, failures, fmt_s, fmt_x, latency_table, measured, method_note, negative_overhead_note, noisy_note, state_note
from perfkit.studies.base import StudyContext

COMPONENTS = ("load_s", "prefill_s", "decode_s", "overhead_s")
COLD_STATES = ("cold_server", "cold_disk", "cold_memory")


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


def _keep_alive(ctx: StudyContext) -> Any:
    """On Ollama every request and preload carries the study's keep_alive (the server default never
    applies); the embedded engine takes it as a server setting."""
    return ctx.cfg.keep_alive_s if ctx.params.backend.kind == "ollama" else None


def run(ctx: StudyContext) -> dict[str, Any]:
    c = ctx.cfg
    settings = {"OLLAMA_KEEP_ALIVE": c.keep_alive_s} if ctx.params.backend.kind == "embedded" else {}
    with ctx.session(settings, keep_alive=_keep_alive(ctx)) as s:
        trials = plan(ctx)
        if "cold_server" in c.states and not s.control.can_restart():
            # Not a failed trial per rep: a state this server can't be put in, said once.
            why = (s.control.why_not_local() if not s.control.is_local
                   else "backend.restart_command is not set")
            ctx.store.event("state_skipped", state="cold_server", why=f"perfkit can't restart this server: {why}")
            trials = [t for t in trials if t.cache_state != "cold_server"]
        s.runner.run(trials, desc="cache states")
        _strategies(ctx, s)
        _scheme_a(ctx, s)
        _facts(ctx, s)
    ctx.store.finalize()
    return analyze(ctx)


def _facts(ctx: StudyContext, s) -> None:
    """The device that runs the model and the disk's read bandwidth for its file (the load floor)."""
    c = ctx.cfg
    kinds = set(ctx.store.events().get("kind", pd.Series(dtype=str)))
    if "device" not in kinds:
        from perfkit.studies.model_size import record_device

        record_device(ctx, s, c.model)
    if "read_bandwidth" not in kinds:
        try:
            path = s.control.model_file(c.model)
        except Unknown as e:
            ctx.store.event("read_bandwidth", unknown_because=str(e))
            return
        s.backend.unload(c.model)
        s.control.wait_memory_released(c.model)
        bw, secs = pagecache.read_bandwidth_bytes_s(path)
        ctx.store.event("read_bandwidth", path=str(path), bytes_s=bw, seconds=secs, size_bytes=path.stat().st_size)


def _strategies(ctx: StudyContext, s) -> None:
    c = ctx.cfg
    done = ctx.store.done_ids()
    rng = random.Random(ctx.params.seed + 1)
    interval = c.keep_warm_interval_s or c.keep_alive_s / 2
    for gap in c.idle_gaps_s:
        for rep in range(c.strategy_reps):
            order = list(c.strategies)
            rng.shuffle(order)
            for strategy in order:
                tid = f"strategy/{strategy}/gap{gap:g}/rep{rep}"
                if tid in done:
                    continue
                fr = user_first_request(s.backend, c.model, strategy, idle_gap_s=gap,
                                        prompt=s.runner.prompt(tid, c.prompt_words), sampling=Sampling(c.num_predict),
                                        keep_warm_interval_s=interval, keep_alive=_keep_alive(ctx),
                                        timeout_s=ctx.params.timeouts.request_s)
                s.runner.record(fr.record, trial_id=tid, strategy=strategy, idle_gap_s=gap, rep=rep, warmup=False,
                                keep_alive_s=c.keep_alive_s, keep_warm_interval_s=interval,
                                loaded_at_send=fr.loaded_at_send, keep_warm_refreshes=fr.keep_warm_refreshes,
                                variant=strategy, cache_state="warm" if fr.loaded_at_send else "cold_memory",
                                **fr.extra)


def _scheme_a(ctx: StudyContext, s) -> None:
    c = ctx.cfg
    if not c.scheme_a_delays_s:
        return
    if not s.control.can_restart():
        ctx.store.event("scheme_a_skipped", why=f"perfkit can't restart this server: {s.control.why_not_local()}"
                        if not s.control.is_local else "backend.restart_command is not set")
        return
    done = ctx.store.done_ids()
    for rep in range(c.scheme_a_reps):
        for delay in c.scheme_a_delays_s:
            tid = f"scheme_a/delay{delay:g}/rep{rep}"
            if tid in done:
                continue
            r = scheme_a(s.backend, c.model, delay_s=delay, prompt=s.runner.prompt(tid, c.prompt_words),
                         sampling=Sampling(c.num_predict), keep_alive=_keep_alive(ctx),
                         timeout_s=ctx.params.timeouts.request_s)
            s.runner.record(r.record, trial_id=tid, strategy="scheme_a", scheme_a_delay_s=delay, rep=rep,
                            warmup=False, variant=f"scheme A, request at +{delay:g} s", cache_state="cold_server",
                            restart_ready_s=r.restart_ready_s, warm_after_s=r.warm_after_s,
                            preload_done_at_send=r.preload_done_at_send, preload_error=r.preload_error)


def _event(ev: pd.DataFrame, kind: str) -> dict | None:
    if len(ev) and "kind" in ev and (ev["kind"] == kind).any():
        return {k: v for k, v in ev[ev["kind"] == kind].iloc[-1].to_dict().items()
                if not (isinstance(v, float) and pd.isna(v))}
    return None


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    ids = df["trial_id"] if len(df) else pd.Series(dtype=str)
    states = df[ids.str.startswith("state/")] if len(df) else df
    strat = df[ids.str.startswith("strategy/")] if len(df) else df
    schemea = df[ids.str.startswith("scheme_a/")] if len(df) else df
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
    ratios = {st: stats.ratio(ok[ok["cache_state"] == st]["e2e_s"], warm) for st in ctx.cfg.states if st != "warm"}
    sok = measured(strat)
    strategies = []
    for (strategy, gap), g in sok.groupby(["strategy", "idle_gap_s"], sort=False):
        e = est(g["e2e_s"])
        strategies.append({"strategy": strategy, "idle_gap_s": gap, "n": len(g), "e2e_s": e.value, "e2e_s_lo": e.lo,
                           "e2e_s_hi": e.hi, "load_s": est(g["load_s"]).value,
                           "loaded_at_send": float(g["loaded_at_send"].mean())})
    strategies = pd.DataFrame(strategies)
    ev = ctx.store.events()
    acc = timeline.load_account(ctx.store.dir, ev)
    t0 = int(df["t_send_ns"].min()) if len(df) and "t_send_ns" in df else None
    cold = ok[ok["cache_state"].isin(COLD_STATES)]
    split = timeline.splits(acc, pd.concat([cold, measured(schemea)])) if len(cold) or len(schemea) else pd.DataFrame()
    return {"trials": df, "states": states, "by_state": by_state, "ratios": ratios, "strategy_trials": strat,
            "strategies": strategies, "scheme_a_trials": schemea, "limit": load_limit(ctx, ok, ev),
            "device": _event(ev, "device"), "read_bandwidth": _event(ev, "read_bandwidth"),
            "scheme_a_skipped": _event(ev, "scheme_a_skipped"), "state_skipped": _event(ev, "state_skipped"),
            "account": acc,
            "timeline": timeline.timeline_frame(acc, t0), "splits": split, "manifest": ctx.store.manifest(),
            "model": ctx.cfg.model, "failures": failures(df)}


def load_limit(ctx: StudyContext, ok: pd.DataFrame, ev: pd.DataFrame) -> dict | None:
    """The cold-disk load against its floor: file bytes / the disk's measured cold read bandwidth."""
    bw = _event(ev, "read_bandwidth")
    if not bw or "bytes_s" not in bw:
        return None
    size = bw.get("size_bytes") or ctx.store.manifest().get("models", {}).get(ctx.cfg.model, {}).get("size_bytes")
    cold = ok[ok["cache_state"] == "cold_disk"]["load_s"]
    if not size or not len(cold):
        return None
    floor = size / bw["bytes_s"]
    e = est(cold)
    return {"model_bytes": size, "read_bandwidth_bytes_s": bw["bytes_s"], "load_floor_s": floor,
            "cold_disk_load_s": e, "pct_of_limit": 100 * floor / e.value if e.value else float("nan")}


def state_table(res: dict[str, Any]) -> pd.DataFrame:
    """Per cache state: medians of e2e, TTFT and the client's split, each in the unit that reads well."""
    b = res["by_state"]
    rows = []
    for _, r in b.iterrows():
        row = {"cache state": r["cache_state"], "n": int(r["n"])}
        for m, name in (("e2e_s", "e2e"), ("ttft_s", "TTFT"), ("load_s", "load"), ("prefill_s", "prefill"),
                        ("decode_s", "decode"), ("overhead_s", "overhead")):
            row[name] = fmt.duration_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("cache state") if rows else pd.DataFrame()


def state_latency(res: dict[str, Any]) -> pd.DataFrame:
    """p50/p90/p99 (with CIs and n) of TTFT, e2e, TPOT and ITL per cache state."""
    return latency_table(measured(res["states"]), "cache_state", groups=[s for s in res["by_state"]["cache_state"]])


def before_after(res: dict[str, Any]) -> pd.DataFrame:
    """The seed guide's table: the first request with no warmup vs with each strategy, CIs, ratio and verdict
    (the same comparison as ``perfkit compare``: Hodges–Lehmann ratio, Moses CI)."""
    sok = measured(res["strategy_trials"])
    if sok.empty:
        return pd.DataFrame()
    rows = []
    for gap, g in sok.groupby("idle_gap_s"):
        base = g[g["strategy"] == "none"]["e2e_s"]
        for strategy, h in g.groupby("strategy", sort=False):
            r = compare_samples(base, h["e2e_s"], "lower") if strategy != "none" and len(base) else None
            phase = ""
            if strategy == "keep_warm" and "keep_warm_phase" in h and h["keep_warm_phase"].notna().any():
                phase = (f"phase {h['keep_warm_phase'].mean():.2f} of the refresh cycle; "
                         f"{int(h['keep_warm_collision'].fillna(False).astype(bool).sum())} of {len(h)} "
                         "collided with a refresh")
            rows.append({"idle gap": fmt.duration(gap), "strategy": strategy,
                         "first-request e2e (median [95% CI])": fmt_s(est(h["e2e_s"])),
                         "model resident at send": f"{h['loaded_at_send'].mean():.0%}",
                         "vs no warmup": r.ratio_text if r else "—",
                         "verdict": r.verdict if r else "—", "keep-warm timing": phase})
    return pd.DataFrame(rows).set_index(["idle gap", "strategy"])


def scheme_a_table(res: dict[str, Any]) -> pd.DataFrame:
    """Scheme A per request delay: restart → ready, time until warm speed, the user's first request."""
    d = measured(res["scheme_a_trials"])
    if d.empty:
        return pd.DataFrame()
    rows = []
    for delay, g in d.groupby("scheme_a_delay_s"):
        rows.append({"user request at": f"+{fmt.duration(delay)} after restart", "n": len(g),
                     "restart → ready": fmt_s(est(g["restart_ready_s"])),
                     "restart → warm (preload done)": fmt_s(est(g["warm_after_s"])),
                     "preload done before the request": f"{g['preload_done_at_send'].mean():.0%}",
                     "user request e2e": fmt_s(est(g["e2e_s"])), "user request TTFT": fmt_s(est(g["ttft_s"]))})
    return pd.DataFrame(rows).set_index("user request at")


def split_table(res: dict[str, Any]) -> pd.DataFrame:
    """Per cold state: the client's split beside the server's (medians with CIs and n)."""
    sp = res["splits"]
    if sp.empty:
        return pd.DataFrame()
    cols = {"e2e_s": "client e2e", "load_s": "client load", "prefill_s": "client prefill",
            "decode_s": "client decode", "overhead_s": "client overhead", "server_spawn_s": "server: send → spawn",
            "server_init_s": "server: spawn → GPU/backend init", "server_runner_start_s": "server: runner started in",
            "server_ready_to_first_token_s": "server: ready → first token", "server_latency_s": "server latency (log)"}
    rows = []
    for state, g in sp.groupby("cache_state", sort=False):
        row = {"cache state": state, "n": len(g)}
        for c, name in cols.items():
            row[name] = ci_cell(est(g[c])) if c in g and g[c].notna().any() else "not in log"
        rows.append(row)
    return pd.DataFrame(rows).set_index("cache state")


def _suspect(res: dict[str, Any]) -> list[str]:
    """Conclusions that would contradict physics are flagged, never stated as findings."""
    ok = measured(res["states"])
    out = []
    warm, cached = ok[ok["cache_state"] == "warm"]["e2e_s"], ok[ok["cache_state"] == "warm_cached"]["prefill_s"]
    wp = ok[ok["cache_state"] == "warm"]["prefill_s"]
    if len(cached) and len(wp) and est(cached).value > est(wp).value:
        out.append("⚠ **Suspect data:** the cached prompt's prefill is slower than an uncached one, which a "
                   "prompt-cache hit cannot be; the machine was probably busy.")
    for st in COLD_STATES:
        c = ok[ok["cache_state"] == st]["e2e_s"]
        if len(c) and len(warm) and est(c).value < est(warm).value:
            out.append(f"⚠ **Suspect data:** {st} requests measured faster than warm ones.")
    return out


def conclusions(res: dict[str, Any]) -> str:
    b = res["by_state"].set_index("cache_state")
    ok = measured(res["states"])
    lines = [f"### What the measurements say ({res['model']})"]
    dev = res.get("device") or {}
    if dev.get("device") == "gpu+cpu":
        lines.insert(0, f"> ⚠ **Partial offload:** {dev.get('cpu_share', 0):.0%} of {res['model']} runs on the CPU "
                        f"({dev.get('offload_evidence')}). That, not cold start, explains slow warm requests.")
    for w in _suspect(res) + [noisy_note(res["trials"]), negative_overhead_note(res["trials"])]:
        if w:
            lines.append("- " + w)
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
        if st == "first_after_load":
            lines.append(f"- The **first request after a load** (model resident, never used) takes {fmt_s(e2e)}: "
                         f"{fmt_x(r)} the warm median — the first-inference cost a preload alone does not remove.")
            continue
        share = load.value / e2e.value if e2e.value else float("nan")
        what = "After a **server restart**" if st == "cold_server" else f"From **{st}**"
        lines.append(f"- {what}, the first request takes {fmt_s(e2e)}: {fmt_x(r)} the warm median; "
                     f"loading the model is {fmt_s(load)}, {share:.0%} of it.")
    sp = res["splits"]
    if len(sp) and "server_runner_start_s" in sp and sp["server_runner_start_s"].notna().any():
        g = sp[sp["server_runner_start_s"].notna()]
        lines.append(f"- The server's own log: the runner started in {fmt_s(est(g['server_runner_start_s']))} "
                     + (f"and the first token came {fmt_s(est(g['server_ready_to_first_token_s']))} after it was ready"
                        if "server_ready_to_first_token_s" in g and g["server_ready_to_first_token_s"].notna().any()
                        else "") + ".")
    elif res["account"].why_empty:
        lines.append(f"- The server's own account is unavailable: {res['account'].why_empty}.")
    if res["limit"]:
        L = res["limit"]
        lines.append(f"- Load floor: {fmt.size(L['model_bytes'])} at the measured "
                     f"{fmt.size(L['read_bandwidth_bytes_s'])}/s cold read = {fmt.duration(L['load_floor_s'])}; "
                     f"the cold-disk load ({fmt_s(L['cold_disk_load_s'])}) runs at {L['pct_of_limit']:.0f}% of that "
                     "limit, so " + ("reading the file is most of the load." if L["pct_of_limit"] > 50
                                     else "most of the load is not disk reading (allocation, set-up, warm-up)."))
    elif res.get("read_bandwidth") and res["read_bandwidth"].get("unknown_because"):
        lines.append(f"- Load floor: unknown, because {res['read_bandwidth']['unknown_because']}.")
    sok = measured(res["strategy_trials"])
    for gap, g in sok.groupby("idle_gap_s"):
        med = {s: est(h["e2e_s"]) for s, h in g.groupby("strategy")}
        best = min(med, key=lambda s: med[s].value)
        worst = max(med, key=lambda s: med[s].value)
        ka = g["keep_alive_s"].iloc[0]
        lines.append(f"- After an idle gap of {fmt.duration(gap)} (keep-alive {fmt.duration(ka)}), the first request "
                     f"is fastest with **{best}** ({fmt_s(med[best])}) and slowest with **{worst}** "
                     f"({fmt_s(med[worst])}); the model was resident at send in "
                     f"{g[g['strategy'] == best]['loaded_at_send'].mean():.0%} of '{best}' trials and "
                     f"{g[g['strategy'] == worst]['loaded_at_send'].mean():.0%} of '{worst}' ones.")
        if best == "keep_warm" or "keep_warm" not in med or "none" not in med:
            continue
        if med["keep_warm"].value > med["none"].value:
            lines.append("  ⚠ Keep-warm measured slower than no warmup at all, which a resident model can't be: "
                         "suspect data (a refresh in flight, or a busy machine).")
    if res.get("state_skipped"):
        lines.append(f"- `{res['state_skipped']['state']}` not measured: {res['state_skipped']['why']}.")
    sa = measured(res["scheme_a_trials"])
    if len(sa):
        lines.append(f"- **Scheme A** (restart, preload at start): a user request is served at warm speed "
                     f"{fmt_s(est(sa['warm_after_s']))} after the restart.")
    elif res.get("scheme_a_skipped"):
        lines.append(f"- Scheme A not measured: {res['scheme_a_skipped']['why']}.")
    for note in (state_note(res["trials"]), res["failures"]):
        if note:
            lines.append("- " + note)
    lines.append("")
    lines.append(method_note(res["manifest"]))
    return "\n".join(lines)
