"""Measuring cold start: the cache states in shuffled rounds, the warmup strategies after each idle gap in planned
looks, scheme A (restart, preload at start), and the facts the analysis reads the load against."""

from __future__ import annotations

import random


from perfkit.core.events import DeviceFound, ReadBandwidth, SchemeASkipped, StateSkipped, any_of
from perfkit.analysis.requests import measured
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.errors import PerfkitError
from perfkit.core.records import RequestRecord
from perfkit.measure.cache_states import scheme_a, user_first_request
from perfkit.measure.devices import record_device
from perfkit.measure.progress import Progress
from perfkit.measure.runner import Trial
from perfkit.measure.sequential import Budget, measure_in_looks
from perfkit.measure.session import Session
from perfkit.servers.control.base import Unknown
from perfkit.studies.base import StudyContext

from .analysis import strategy_claims


def measure(ctx: StudyContext) -> None:
    """The cache states, then the warmup strategies, scheme A, and the device and disk facts."""
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


def plan(ctx: StudyContext) -> list[Trial]:
    c = ctx.cfg
    rng = random.Random(ctx.params.seed)
    trials = [Trial("state/warmup0", c.model, "warm", 0, True, "warm", c.prompt_words, sampling(c))]
    for rep in range(c.reps):
        order = list(c.states)
        rng.shuffle(order)
        trials += [Trial(f"state/{s}/rep{rep}", c.model, s, rep, False, s, c.prompt_words, sampling(c),
                         tags={"order_seed": ctx.params.seed}) for s in order]
    return trials


def sampling(c) -> Sampling:
    """Every measured request's options: its output length and, where the parameters say, ``think``."""
    return Sampling(c.num_predict, think=c.think)


def _facts(ctx: StudyContext, s: Session) -> None:
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


def _strategies(ctx: StudyContext, s: Session, budget: Budget) -> None:
    """The warmup strategies, interleaved in shuffled rounds, in planned looks until the fastest is settled."""
    c = ctx.cfg
    looks = c.looks()
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


def _strategy_trial(ctx: StudyContext, s: Session, strategy: str, gap: float, rep: int, interval: float,
                    done: set[str]) -> None:
    c = ctx.cfg
    tid = f"strategy/{strategy}/gap{gap:g}/rep{rep}"
    if tid in done:
        return
    try:
        fr = user_first_request(s.backend, c.model, strategy, idle_gap_s=gap,
                                prompt=s.runner.prompt(tid, c.prompt_words),
                                sampling=sampling(c), keep_warm_interval_s=interval,
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


def _scheme_a(ctx: StudyContext, s: Session) -> None:
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


def _scheme_a_trial(ctx: StudyContext, s: Session, rep: int, delay: float, done: set[str]) -> None:
    c = ctx.cfg
    tid = f"scheme_a/delay{delay:g}/rep{rep}"
    if tid in done:
        return
    r = scheme_a(s.backend, c.model, delay_s=delay, prompt=s.runner.prompt(tid, c.prompt_words),
                 sampling=sampling(c), keep_alive=s.runner.keep_alive,
                 timeout_s=ctx.params.timeouts.request_s)
    s.runner.record(r.record, trial_id=tid, strategy="scheme_a", scheme_a_delay_s=delay, rep=rep,
                    warmup=False, variant=f"scheme A, request at +{delay:g} s", cache_state="cold_server",
                    restart_ready_s=r.restart_ready_s, warm_after_s=r.warm_after_s,
                    preload_done_at_send=r.preload_done_at_send, preload_error=r.preload_error)
