"""Cold start: why is the first request slow, and which warmup fixes it.

First-request latency in each cache state (server restarted, cold disk, cold memory, first request
after a load, warm, cached prompt), decomposed into load / prefill / decode / overhead by the client
and into spawn / init / runner start / first token by the server's own log; the warmup strategies
and the first request a user sees after an idle gap; scheme A (restart, preload at start); load time
against its physical limit (file bytes / the disk's measured read bandwidth).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import Field, field_validator, model_validator

from perfkit.analysis import figures as F, stats, timeline
from perfkit.analysis.series import censored
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.models import resource_figures
from perfkit.analysis.requests import (attempted, ci_cell, est, failures, latency_table, measured, method_note,
                                       negative_overhead_note, noisy_note, per_request_itl, state_note)
from perfkit.analysis.decisions import best_of
from perfkit.analysis.sequential import Looks
from perfkit.analysis.verdicts import MIN_EFFECT, compare_samples
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.units import RATIO, SECONDS
from perfkit.core.errors import PerfkitError
from perfkit.core.events import DeviceFound, ReadBandwidth, SchemeASkipped, StateSkipped, any_of, last_of
from perfkit.core.records import CACHE_STATES, RequestRecord
from perfkit.core.schema import MAX_GAP_S, MAX_PROMPT_WORDS, MAX_REPS, MAX_TOKENS, Strict, members, unique
from perfkit.measure.cache_states import WARMUP_STRATEGIES, scheme_a, user_first_request
from perfkit.measure.devices import record_device
from perfkit.measure.progress import Progress
from perfkit.measure.runner import Trial
from perfkit.measure.sequential import Budget, looks_taken, measure_in_looks
from perfkit.report.answer import answer_block
from perfkit.servers.control.base import Unknown
from perfkit.studies.base import Study, StudyContext, StudyResult
from perfkit.studies.registry import register

COMPONENTS = ("load_s", "prefill_s", "decode_s", "overhead_s")
COLD_STATES = ("cold_server", "cold_disk", "cold_memory")


class ColdStartParams(Strict):
    """``studies.cold_start``: which cache states and warmup strategies, how many repetitions."""

    model: str
    states: list[str] = Field(default_factory=lambda: ["cold_disk", "cold_memory", "warm"], min_length=1)
    reps: int = Field(5, ge=1, le=MAX_REPS)
    num_predict: int = Field(32, ge=1, le=MAX_TOKENS)
    prompt_words: int = Field(48, ge=4, le=MAX_PROMPT_WORDS)
    strategies: list[str] = Field(default_factory=lambda: list(WARMUP_STRATEGIES))
    strategy_reps: int = Field(2, ge=1, le=MAX_REPS)
    strategy_max_reps: int | None = Field(None, ge=1, le=MAX_REPS, description=(
        "measure the warmup strategies until the fastest is called (or shown equal to the others), looking after "
        "every strategy_reps more, up to this many; unset: strategy_reps only"))
    budget_s: float | None = Field(None, gt=0, description="this study's time budget: no further look starts "
                                   "once it would be spent")
    keep_alive_s: float = Field(300.0, gt=0, description="server keep-alive during the strategy runs")
    idle_gaps_s: list[float] = Field(default_factory=lambda: [1.0])
    keep_warm_interval_s: float | None = Field(None, gt=0)
    scheme_a_delays_s: list[float] = Field(default_factory=list, description=(
        "scheme A (restart, preload at start): a user request arrives this long after the restart; "
        "empty: not measured"))
    scheme_a_reps: int = Field(2, ge=1, le=MAX_REPS)

    @model_validator(mode="after")
    def _max_reps(self):
        if self.strategy_max_reps is not None and self.strategy_max_reps < self.strategy_reps:
            raise ValueError(f"strategy_max_reps ({self.strategy_max_reps}) must be ≥ strategy_reps "
                             f"({self.strategy_reps})")
        return self

    def strategy_looks(self) -> Looks:
        return Looks(self.strategy_reps, self.strategy_max_reps)

    @field_validator("scheme_a_delays_s")
    @classmethod
    def _scheme_a(cls, v):
        if any(not 0 <= d <= MAX_GAP_S for d in v):
            raise ValueError(f"a list of delays in seconds after the restart, each 0 ≤ delay ≤ {MAX_GAP_S:g}")
        return unique(v, "scheme A delay")

    @field_validator("states")
    @classmethod
    def _states(cls, v):
        return unique(members(v, CACHE_STATES, "cache state"), "cache state")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v):
        return unique(members(v, WARMUP_STRATEGIES, "warmup strategy"), "warmup strategy")

    @field_validator("idle_gaps_s")
    @classmethod
    def _gaps(cls, v):
        if not v or any(not 0 <= g <= MAX_GAP_S for g in v):
            raise ValueError(f"a non-empty list of idle gaps in seconds, each 0 ≤ gap ≤ {MAX_GAP_S:g}")
        return unique(v, "idle gap")




@dataclass
class ColdStartResult(StudyResult):
    model: str = ""
    states: pd.DataFrame = field(default_factory=pd.DataFrame)
    by_state: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratios: dict[str, stats.Estimate] = field(default_factory=dict)
    strategy_trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    strategies: pd.DataFrame = field(default_factory=pd.DataFrame)
    scheme_a_trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    strategy_looks: Looks = field(default_factory=lambda: Looks(1))
    strategy_looks_taken: tuple[list[int], str] | None = None
    limit: dict | None = None
    device: dict | None = None
    read_bandwidth: dict | None = None
    scheme_a_skipped: dict | None = None
    state_skipped: dict | None = None
    account: Any = None
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)
    splits: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)


@register
class ColdStart(Study):
    name = "cold_start"
    title = "Cold start: where the first request's time goes"
    question = "Why is the first request slow, and which warmup fixes it?"
    Params = ColdStartParams
    order = 10

    def measure(self, ctx: StudyContext) -> None:
        c = ctx.cfg
        budget = Budget(c.budget_s)
        with ctx.session(keep_alive_s=c.keep_alive_s) as s:
            trials = plan(ctx)
            if "cold_server" in c.states and not s.control.can_restart():
                # Not a failed trial per rep: a state this server can't be put in, said once.
                why = (s.control.why_not_local() if not s.control.is_local
                       else "backend.restart_command is not set")
                ctx.store.emit(StateSkipped(state="cold_server", why=f"perfkit can't restart this server: {why}"))
                trials = [t for t in trials if t.cache_state != "cold_server"]
            s.runner.run(trials, desc="cache states")
            _strategies(ctx, s, budget)
            _scheme_a(ctx, s)
            _facts(ctx, s)

    def analyze(self, ctx: StudyContext) -> ColdStartResult:
        return analyze(ctx)

    def conclusions(self, result: ColdStartResult) -> str:
        return conclusions(result)


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


def _facts(ctx: StudyContext, s) -> None:
    """The device that runs the model and the disk's read bandwidth for its file (the load floor)."""
    c = ctx.cfg
    ev = ctx.store.events()
    if not any_of(ev, DeviceFound):
        record_device(s, ctx.store, c.model)
    if not any_of(ev, ReadBandwidth):
        try:
            s.control.model_file(c.model)
        except Unknown as e:
            ctx.store.emit(ReadBandwidth(unknown_because=str(e)))
            return
        s.backend.unload(c.model)
        s.control.wait_memory_released(c.model)
        bw = s.control.read_bandwidth(c.model)  # path, bytes_s, seconds, size_bytes (and host, on a cluster node)
        ctx.store.emit(ReadBandwidth(path=bw.get("path"), bytes_s=bw.get("bytes_s"), read_s=bw.get("seconds"),
                                     size_bytes=bw.get("size_bytes"), host=bw.get("host")))


def _strategies(ctx: StudyContext, s, budget: Budget) -> None:
    """The warmup strategies, interleaved in shuffled rounds, in planned looks until the fastest is settled."""
    c = ctx.cfg
    looks = c.strategy_looks()
    rng = random.Random(ctx.params.seed + 1)
    orders = {gap: [rng.sample(list(c.strategies), len(c.strategies)) for _ in range(looks.ns[-1])]
              for gap in c.idle_gaps_s}
    interval = c.keep_warm_interval_s or c.keep_alive_s / 2
    state = {"reps": 0}

    def measure_to(n: int) -> None:
        done = ctx.store.done_ids()
        total = len(c.idle_gaps_s) * (n - state["reps"]) * len(c.strategies)
        with Progress(ctx.store.dir, f"warmup strategies (look {looks.ns.index(n) + 1} of {looks.k})", total,
                      interactive=ctx.params.progress) as bar:
            for gap in c.idle_gaps_s:
                for rep in range(state["reps"], n):
                    for strategy in orders[gap][rep]:
                        bar.update(1, f"{strategy} after {fmt.duration(gap)}")
                        _strategy_trial(ctx, s, strategy, gap, rep, interval, done)
        state["reps"] = n

    def settled() -> bool:
        df = ctx.store.trials()
        sok = measured(df[df["trial_id"].astype(str).str.startswith("strategy/")]) if len(df) else df
        return all(claim is None or claim.settled for _, _, claim in strategy_claims(sok, looks.confidence))

    measure_in_looks(ctx.store, "warmup strategies", looks, measure_to, settled, budget)


def _strategy_trial(ctx: StudyContext, s, strategy: str, gap: float, rep: int, interval: float, done: set) -> None:
    c = ctx.cfg
    tid = f"strategy/{strategy}/gap{gap:g}/rep{rep}"
    if tid in done:
        return
    try:
        fr = user_first_request(s.backend, c.model, strategy, idle_gap_s=gap,
                                prompt=s.runner.prompt(tid, c.prompt_words),
                                sampling=Sampling(c.num_predict), keep_warm_interval_s=interval,
                                keep_alive=s.runner.keep_alive, timeout_s=ctx.params.timeouts.request_s)
    except PerfkitError as e:  # the warmup itself failed (a load past the timeout): a failed trial
        rec = RequestRecord(s.backend.name, c.model, ok=False, error=f"warmup failed: {str(e)[:200]}")
        s.runner.record(rec, trial_id=tid, strategy=strategy, idle_gap_s=gap, rep=rep, warmup=False,
                        keep_alive_s=c.keep_alive_s, keep_warm_interval_s=interval, variant=strategy,
                        cache_state="cold_memory")
        return
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
        ctx.store.emit(SchemeASkipped(why=f"perfkit can't restart this server: {s.control.why_not_local()}"
                                      if not s.control.is_local else "backend.restart_command is not set"))
        return
    done = ctx.store.done_ids()
    with Progress(ctx.store.dir, "scheme A (restart, preload at start)", c.scheme_a_reps * len(c.scheme_a_delays_s),
                  interactive=ctx.params.progress) as bar:
        for rep in range(c.scheme_a_reps):
            for delay in c.scheme_a_delays_s:
                bar.update(1, f"request at +{fmt.duration(delay)}")
                _scheme_a_trial(ctx, s, rep, delay, done)


def _scheme_a_trial(ctx: StudyContext, s, rep: int, delay: float, done: set) -> None:
    c = ctx.cfg
    tid = f"scheme_a/delay{delay:g}/rep{rep}"
    if tid in done:
        return
    r = scheme_a(s.backend, c.model, delay_s=delay, prompt=s.runner.prompt(tid, c.prompt_words),
                 sampling=Sampling(c.num_predict), keep_alive=s.runner.keep_alive,
                 timeout_s=ctx.params.timeouts.request_s)
    s.runner.record(r.record, trial_id=tid, strategy="scheme_a", scheme_a_delay_s=delay, rep=rep,
                    warmup=False, variant=f"scheme A, request at +{delay:g} s", cache_state="cold_server",
                    restart_ready_s=r.restart_ready_s, warm_after_s=r.warm_after_s,
                    preload_done_at_send=r.preload_done_at_send, preload_error=r.preload_error)


def _workload(c: ColdStartParams) -> dict[str, Any]:
    return {"prompt_words": c.prompt_words, "num_predict": c.num_predict}


def analyze(ctx: StudyContext) -> ColdStartResult:
    c = ctx.cfg
    df = ctx.store.trials()
    ids = df["trial_id"] if len(df) else pd.Series(dtype=str)
    states = df[ids.str.startswith("state/")] if len(df) else df
    strat = df[ids.str.startswith("strategy/")] if len(df) else df
    schemea = df[ids.str.startswith("scheme_a/")] if len(df) else df
    ok = measured(states)
    by_state = []
    for state in c.states:
        g = ok[ok["cache_state"] == state]
        row = {"cache_state": state, "n": len(g)}
        for m in ("e2e_s", "ttft_s", *COMPONENTS):
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
    sa_ok = measured(schemea)
    split = timeline.splits(acc, pd.concat([cold, sa_ok])) if len(cold) or len(sa_ok) else pd.DataFrame()
    device = last_of(ev, DeviceFound)
    figs = FigureSet(_figures(c, ok, sok, sa_ok, ratios, device, attempted(states)))
    _pairs(figs, sok, sa_ok, c.strategy_looks().confidence)
    return ColdStartResult(
        study="cold_start", figures=figs, trials=df, manifest=ctx.store.manifest(), failures=failures(df),
        model=c.model, states=states, by_state=by_state, ratios=ratios, strategy_trials=strat,
        strategies=pd.DataFrame(strategies), scheme_a_trials=schemea, strategy_looks=c.strategy_looks(),
        strategy_looks_taken=looks_taken(ev, "warmup strategies"), limit=load_limit(ctx, ok, ev), device=device,
        read_bandwidth=last_of(ev, ReadBandwidth), scheme_a_skipped=last_of(ev, SchemeASkipped),
        state_skipped=last_of(ev, StateSkipped), account=acc, timeline=timeline.timeline_frame(acc, t0),
        splits=split, samples=ctx.store.samples())


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


def state_table(res: "ColdStartResult") -> pd.DataFrame:
    """Per cache state: medians of e2e, TTFT and the client's split, each in the unit that reads well."""
    b = res.by_state
    rows = []
    for _, r in b.iterrows():
        row = {"cache state": r["cache_state"], "n": int(r["n"])}
        for m, name in (("e2e_s", "e2e"), ("ttft_s", "TTFT"), ("load_s", "load"), ("prefill_s", "prefill"),
                        ("decode_s", "decode"), ("overhead_s", "overhead")):
            row[name] = SECONDS.ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"])
        g = measured(res.states)
        g = g[g["cache_state"] == r["cache_state"]] if len(g) else g
        frac = g["state_file_resident_fraction"].dropna() if "state_file_resident_fraction" in g else []
        wait = g["state_memory_release_wait_s"].dropna() if "state_memory_release_wait_s" in g else []
        # How the state was made: the model file's share in the page cache at send, the wait for memory release.
        row["file in page cache"] = fmt.pct(float(frac.median())) if len(frac) else "—"
        row["memory release wait"] = fmt.duration(float(wait.median())) if len(wait) else "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("cache state") if rows else pd.DataFrame()


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
    series = [Series(comp, list(b["cache_state"]), [max(0.0, v) if pd.notna(v) else 0.0 for v in b[f"{comp}_s"]],
                     text=[f"{comp}: {SECONDS.text(v)} (n={int(n)})" for v, n in zip(b[f"{comp}_s"], b["n"])])
              for comp in ("load", "prefill", "decode", "overhead")]
    return Chart("bar", "Where the first request's time goes (medians)", SECONDS.axis_label(),
                 "Median load, prefill, decode and overhead of the first request in each cache state, stacked",
                 series, stacked=True)


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


def _suspect(res: ColdStartResult) -> list[str]:
    """Conclusions that would contradict physics are flagged, never stated as findings."""
    ok = measured(res.states)
    if ok.empty:
        return []
    out = []
    warm, cached = ok[ok["cache_state"] == "warm"]["e2e_s"], ok[ok["cache_state"] == "warm_cached"]["prefill_s"]
    wp = ok[ok["cache_state"] == "warm"]["prefill_s"]
    if len(cached) and len(wp) and compare_samples(wp, cached, "lower").verdict == "worse":
        out.append("⚠ **Suspect data:** the cached prompt's prefill is slower than an uncached one, which a "
                   "prompt-cache hit cannot be; the machine was probably busy.")
    for st in COLD_STATES:
        c = ok[ok["cache_state"] == st]["e2e_s"]
        if len(c) and len(warm) and compare_samples(warm, c, "lower").verdict == "improved":
            out.append(f"⚠ **Suspect data:** {st} requests measured faster than warm ones.")
    return out


def _versus(r: stats.Estimate, what: str) -> str:
    """How a ratio's CI reads: 'x× [lo, hi] the warm median' or that this n can't tell them apart."""
    text = RATIO.estimate(r)
    if r.has_ci and r.lo <= 1 <= r.hi:
        return f"{text} {what}: not distinguishable from it at this n"
    if not r.has_ci:
        return f"{text} {what} (no CI at this n, so no claim either way)"
    return f"{text} {what}"


def conclusions(res: ColdStartResult) -> str:
    f = res.figures
    ok = measured(res.states)
    lines = [answer_block(answer(res), res.failures) + f"### What the measurements say ({res.model})"]
    dev = res.device or {}
    if dev.get("device") == "gpu+cpu":
        lines.insert(0, f"> ⚠ **Partial offload:** {dev.get('cpu_share', 0):.0%} of {res.model} runs on the CPU "
                        f"({dev.get('offload_evidence')}). That, not cold start, explains slow warm requests.")
    for w in _suspect(res) + [noisy_note(res.trials), negative_overhead_note(res.trials)]:
        if w:
            lines.append("- " + w)
    if "cold_start/e2e/warm" in f:
        lines.append(f"- A **warm** request takes {f['cold_start/e2e/warm'].text()} end to end.")
    for st, r in res.ratios.items():
        e2e = f.get(f"cold_start/e2e/{st}")
        if e2e is None:
            continue
        g = ok[ok["cache_state"] == st]
        if st == "warm_cached":
            lines.append(f"- Repeating a prompt the server has cached (**warm_cached**) takes {e2e.text()}: "
                         f"{_versus(r, 'the warm median')}; its prefill is {SECONDS.estimate(est(g['prefill_s']))}.")
            continue
        if st == "first_after_load":
            lines.append(f"- The **first request after a load** (model resident, never used) takes {e2e.text()}: "
                         f"{_versus(r, 'the warm median')}.")
            continue
        load = f.get(f"cold_start/load/{st}")
        share = load.value / e2e.value if load is not None and e2e.value else float("nan")
        what = "After a **server restart**" if st == "cold_server" else f"From **{st}**"
        lines.append(f"- {what}, the first request takes {e2e.text()}: {_versus(r, 'the warm median')}"
                     + (f"; loading the model is {load.text()}, {share:.0%} of it." if load is not None else "."))
    sp = res.splits
    if len(sp) and "server_runner_start_s" in sp and sp["server_runner_start_s"].notna().any():
        g = sp[sp["server_runner_start_s"].notna()]
        lines.append(f"- The server's own log: the runner started in {SECONDS.estimate(est(g['server_runner_start_s']))}"
                     + (f" and the first token came {SECONDS.estimate(est(g['server_ready_to_first_token_s']))} after it was "
                        "ready" if "server_ready_to_first_token_s" in g and g["server_ready_to_first_token_s"].notna().any()
                        else "") + ".")
    elif res.account is not None and res.account.why_empty:
        lines.append(f"- The server's own account is unavailable: {res.account.why_empty}.")
    acc = res.account
    host = (res.manifest.get("control") or {}).get("host")
    if acc is not None and host and acc.host_clock_uncertainty_s is not None:
        lines.append(f"- The server runs on host {host}; perfkit's agent there read its processes, files and log. Its "
                     f"times are on the run's clock within ± {fmt.duration(acc.host_clock_uncertainty_s)} (the measured "
                     "offset of that host's clock).")
    if acc is not None and acc.clock_n:
        lines.append(f"- The server's log and the run's clock: request ends differ by {fmt.duration(acc.clock_offset_s)} "
                     f"(median of {acc.clock_n} requests; the server stamps whole seconds"
                     + (f"; its zone-less stamps read in {acc.zone}" if acc.zone else "") + ").")
    if res.limit:
        L = res.limit
        lines.append(f"- Load floor: {fmt.size(L['model_bytes'])} at the measured "
                     f"{fmt.size(L['read_bandwidth_bytes_s'])}/s cold read = {fmt.duration(L['load_floor_s'])}; "
                     f"the cold-disk load ({SECONDS.estimate(L['cold_disk_load_s'])}) runs at {L['pct_of_limit']:.0f}% of that "
                     "limit, so " + ("reading the file is most of the load." if L["pct_of_limit"] > 50
                                     else "most of the load is not disk reading (allocation, set-up, warm-up)."))
    elif res.read_bandwidth and res.read_bandwidth.get("unknown_because"):
        lines.append(f"- Load floor: unknown, because {res.read_bandwidth['unknown_because']}.")
    lines += _strategy_lines(res)
    if res.state_skipped:
        lines.append(f"- `{res.state_skipped['state']}` not measured: {res.state_skipped['why']}.")
    lines += _scheme_a_lines(res)
    for note in (state_note(res.trials), res.failures):
        if note:
            lines.append("- " + note)
    lines.append("")
    lines.append(method_note(res.manifest))
    return "\n".join(lines)


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


def _strategy_claims(res: ColdStartResult) -> list[tuple[float, dict[str, F.Figure], Any]]:
    return strategy_claims(measured(res.strategy_trials), res.strategy_looks.confidence, res.figures)


def _strategy_lines(res: ColdStartResult) -> list[str]:
    """Per idle gap: which warmup the first request is fastest with, claimed only where it beats every other
    strategy (the same tested claim as the best setting of config tuning)."""
    sok = measured(res.strategy_trials)
    out = []
    for gap, figs, claim in _strategy_claims(res):
        g = sok[sok["idle_gap_s"] == gap]
        ka = g["keep_alive_s"].iloc[0]
        resident = {s: g[g["strategy"] == s]["loaded_at_send"].mean() for s in figs}
        head = (f"- After an idle gap of {fmt.duration(gap)} (keep-alive {fmt.duration(ka)}): "
                + "; ".join(f"**{s}** {x.text()} (model resident at send in {resident[s]:.0%})" for s, x in figs.items()))
        beaten = [s for s, r in claim.rows.items() if s not in claim.not_separated]
        if claim.called and beaten:
            head += f". **{claim.best}** is the fastest: it beats {', '.join(beaten)}"
        elif beaten:
            head += (f". **{claim.best}** is faster than {', '.join(beaten)}; "
                     + (f"equal to {', '.join(claim.not_separated)} within ±{claim.min_effect:.0%}" if claim.settled
                        else f"not separated from {', '.join(claim.not_separated)} at this n"))
        elif claim.settled and len(figs) > 1:
            head += f". All are equal within ±{claim.min_effect:.0%}: no warmup strategy changes this first request"
        elif len(figs) > 1:
            head += ". At this n no strategy is distinguishable from another"
        out.append(head + ".")
        if "keep_warm" in figs and "none" in figs and compare_samples(
                figs["none"].samples, figs["keep_warm"].samples, "lower").verdict == "worse":
            out.append("  ⚠ Keep-warm measured slower than no warmup at all, which a resident model can't be: "
                       "suspect data (a refresh in flight, or a busy machine).")
    if out and res.strategy_looks_taken:
        said = res.strategy_looks.sentence(*res.strategy_looks_taken, what="first requests with each strategy")
        if said:
            out.append("  " + said)
    return out


def answer(res: ColdStartResult) -> list[str]:
    """Why the first request is slow, by how much, and which warmup fixes it (at most three sentences)."""
    f, out = res.figures, []
    warm = f.get("cold_start/e2e/warm")
    cold_state = next((st for st in ("cold_server", "cold_memory", "cold_disk") if f"cold_start/e2e/{st}" in f), None)
    if cold_state and warm is not None:
        cold, ratio = f[f"cold_start/e2e/{cold_state}"], f.get(f"cold_start/cold_over_warm/{cold_state}")
        what = {"cold_server": "after a server restart", "cold_memory": "with the model out of memory",
                "cold_disk": "with the model file out of the page cache"}[cold_state]
        out.append(f"The first request {what} took {cold.link()}, "
                   f"{ratio.link(RATIO.text(ratio.value)) if ratio is not None else fmt.NA} a warm request "
                   f"({warm.link()})" + ("." if ratio is not None and ratio.estimate.has_ci else
                                         ", too few requests for a CI of that ratio."))
        row = res.by_state[res.by_state["cache_state"] == cold_state] if len(res.by_state) else res.by_state
        if len(row):
            parts = {c: float(row.iloc[0][c]) for c in COMPONENTS if c in row and pd.notna(row.iloc[0][c])}
            if parts and cold.value > 0:
                top = max(parts, key=parts.get)
                name = {"load_s": "loading the model", "prefill_s": "reading the prompt (prefill)",
                        "decode_s": "generating the answer", "overhead_s": "time outside the server's own "
                        "account (connection, queueing, set-up)"}[top]
                load = f.get(f"cold_start/load/{cold_state}")
                value = load.link() if top == "load_s" and load is not None else fmt.duration(parts[top])
                # One sentence with the one before it: the answer has room for the warmups' too.
                out[-1] = out[-1].rstrip(".") + f"; most of it is {name}: {value}, {parts[top] / cold.value:.0%} of it."
    out += _preload_answer(res)
    claims = _strategy_claims(res)
    if claims:
        gap, figs, claim = claims[-1]
        none = figs.get("none")
        beaten = [k for k in claim.rows if k not in claim.not_separated]
        if claim.best != "none" and (claim.called or (claim.settled and "none" in beaten)):
            ties = f" (or, equally within ±{claim.min_effect:.0%}, **{'**, **'.join(claim.not_separated)}**)" \
                if claim.not_separated else ""
            out.append(f"After {fmt.duration(gap)} idle, **{claim.best}**{ties} fixes it: the first request takes "
                       f"{figs[claim.best].link()}" + (f" instead of {none.link()} with no warmup." if none is not None
                                                       else "."))
        elif claim.called:
            out.append(f"After {fmt.duration(gap)} idle, no warmup beat doing nothing ({none.link()}): the model was "
                       "still resident.")
        elif claim.settled:
            out.append(f"After {fmt.duration(gap)} idle, the warmup strategies are equal within "
                       f"±{claim.min_effect:.0%}: none changes the first request.")
        else:
            stopped = res.strategy_looks_taken[1] if res.strategy_looks_taken else ""
            why = (" before the time budget was spent" if stopped == "budget" else " at this n")
            out.append(f"After {fmt.duration(gap)} idle, no warmup strategy is separable from the others{why} "
                       f"(the fastest by its median, **{claim.best}**, is not separated from "
                       f"{', '.join(claim.not_separated)}).")
    return out


def _preload_answer(res: ColdStartResult) -> list[str]:
    """After a restart: does preloading at start fix the first request (scheme A at its latest delay against a
    restart with no preload), by the same comparison as the before/after table."""
    p = next((p for p in res.figures.pairs if p.row == "first request after a restart"), None)
    if p is None:
        return []
    before, after = res.figures[p.before], res.figures[p.after]
    r = compare_samples(before.samples, after.samples, "lower", min_effect=MIN_EFFECT)
    delay = after.where.get("delay_s", "")
    if r.verdict == "improved":
        return [f"After a restart, preloading the model at start fixes it for a request {fmt.duration(float(delay))} "
                f"later: {after.link()} instead of {before.link()}."] if delay != "" else []
    return [f"After a restart, preloading at start did not shorten a request {fmt.duration(float(delay))} later "
            f"({after.link()} against {before.link()}): the model was still loading, or unloaded again."] \
        if delay != "" else []


def _scheme_a_lines(res: ColdStartResult) -> list[str]:
    """Scheme A: the user's request after a restart with preload, against a warm request, by its CI."""
    sa = measured(res.scheme_a_trials)
    if sa.empty:
        return [f"- Scheme A not measured: {res.scheme_a_skipped['why']}."] if res.scheme_a_skipped else []
    warm = res.figures.get("cold_start/e2e/warm")
    out = []
    for delay, g in sa.groupby("scheme_a_delay_s"):
        fig = res.figures.get(f"cold_start/e2e/user request/{delay:g}")
        if fig is None:
            continue
        done = g["preload_done_at_send"].mean()
        line = (f"- **Scheme A** (restart, preload at start): a user request {fmt.duration(delay)} after the restart "
                f"took {fig.text()}; the preload had finished before it in {done:.0%} of trials "
                f"(restart → preload done {SECONDS.estimate(est(g['warm_after_s']))})")
        if warm is not None:
            r = stats.ratio(fig.samples, warm.samples)
            line += f"; against a warm request ({warm.text()}) that is {_versus(r, 'as long')}"
        out.append(line + ".")
    return out
