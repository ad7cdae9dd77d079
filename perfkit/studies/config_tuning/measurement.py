"""Measuring config tuning: each setting restarted into and confirmed, its closed loops, then its open-loop
sweep."""

from __future__ import annotations

from typing import Any

from perfkit.core.events import AutoRateStep, DeviceFound, RateExtended, SettingsConfirmed
from perfkit.analysis.series import CANT_TELL
from perfkit.client.backends import Sampling
from perfkit.core.settings import settings_label, think_of
from perfkit.measure.confirm import confirm_settings as verify
from perfkit.measure.session import Session
from perfkit.measure.workload import Workload
from perfkit.studies.base import StudyContext

from .rates import judge_rate, next_rate, planned_rates, series_seed


def label(setting: dict) -> str:
    return settings_label(setting)


def measure(ctx: StudyContext) -> None:
    """Every setting in the order given, on one server session (restarted between settings)."""
    c = ctx.cfg
    with ctx.session(c.settings[0], server_metrics=True) as s:
        for i, setting in enumerate(c.settings):
            _measure_setting(ctx, s, i, setting)


def _measure_setting(ctx: StudyContext, s: Session, i: int, setting: dict[str, Any]) -> None:
    """Setting ``i``: restarted into (the first is what the session started with), confirmed, its closed loops at
    each client count, then its open-loop sweep."""
    c = ctx.cfg
    if i:
        s.restart(setting)
    check = verify(s, c.model)
    ctx.store.emit(SettingsConfirmed(config_index=i, config=label(setting), **check))
    if i == 0:
        ctx.store.emit(DeviceFound(model=c.model, **s.control.device(c.model, s.backend).as_record()))
    tags = {"config": label(setting), "config_index": i}
    sampling = Sampling(c.num_predict, think=think_of(setting))
    wl = ctx.workload(c.workload, s, c.model) if c.workload.kind != "synthetic" else None
    for conc in c.concurrency:
        s.runner.closed_loop(c.model, conc, c.requests, series=f"cfg{i}/c{conc}",
                             sampling=sampling, prompt_words=c.prompt_words, tags=tags, workload=wl)
    if wl is not None and wl.params.kind == "trace" and not c.rates_rps:
        # A trace with no rates to sweep: replayed as it was recorded (time_scale applied).
        s.runner.open_loop(c.model, None, c.rate_requests, series=f"cfg{i}/trace", seed=ctx.params.seed,
                           sampling=sampling, prompt_words=c.prompt_words, tags=tags, workload=wl)
    _sweep(ctx, s, i, tags, wl, check.get("total_slots") or None, sampling)


def _sweep(ctx: StudyContext, s: Session, i: int, tags: dict[str, Any], wl: Workload | None,
           slots: int | None, sampling: Sampling) -> None:
    """Setting ``i``'s open-loop rates; with ``rates_rps: auto``, further rates chosen from the verdicts so far
    until the limit is bracketed or ``rate_search_steps`` run out."""
    c = ctx.cfg
    rates, steps = planned_rates(ctx, i), 0
    while rates:
        rate = rates.pop(0)
        _one_rate(ctx, s, i, rate, tags, wl, slots, sampling)
        if not rates and c.rates_rps == "auto" and steps < c.rate_search_steps:
            nxt = next_rate(ctx.store.trials(), i, c.slo, slots)
            if nxt is not None:
                ctx.store.emit(AutoRateStep(config_index=i, rate_rps=nxt, step=steps + 1))
                rates.append(nxt)
                steps += 1


def _one_rate(ctx: StudyContext, s: Session, i: int, rate: float, tags: dict[str, Any], wl: Workload | None,
              slots: int | None, sampling: Sampling) -> None:
    """One offered rate, measured again with twice the requests (up to ``rate_extend`` times) while its trend
    can't tell whether the server kept up."""
    c = ctx.cfg
    n, series = c.rate_requests, f"cfg{i}/r{rate:g}"
    for look in range(c.rate_extend + 1):
        if look:  # the trend could not tell: a longer series, from an empty queue again
            n, series = 2 * n, f"cfg{i}/r{rate:g}/n{2 * n}"
            ctx.store.emit(RateExtended(config_index=i, rate_rps=rate, requests=n, look=look))
        s.runner.open_loop(c.model, rate, n, series=series, seed=series_seed(ctx.params.seed, series),
                           arrivals=c.arrivals, sampling=sampling,
                           prompt_words=c.prompt_words, tags=tags, workload=wl,
                           burstiness=c.burstiness)
        df = ctx.store.trials()
        if judge_rate(df, i, rate, c.slo, slots)[0] != CANT_TELL:
            break
