"""The search: Optuna's sampler proposes the next setting, perfkit restarts into it, confirms it and measures
one look of it."""

from __future__ import annotations

import math
import time
from typing import Any

from perfkit.core.events import TuningCandidate, TuningSearchStopped
from perfkit.analysis import figures as F
from perfkit.analysis.sequential import BUDGET
from perfkit.client.backends import Sampling
from perfkit.core.settings import settings_label, think_of
from perfkit.measure.confirm import confirm_settings
from perfkit.measure.progress import Progress
from perfkit.measure.sequential import Budget
from perfkit.measure.session import Session
from perfkit.studies.base import StudyContext

from .objective import eligible, objective_figure
from .params import objective_metric
from .records import candidate_rows, recorded_candidates


def _value(ctx: StudyContext, key: str) -> float:
    """The candidate's objective so far (NaN when nothing measured; −inf/inf when it is not eligible)."""
    fig = objective_figure(ctx.cfg, candidate_rows(ctx, key), key)
    better = fig.better if fig is not None else "higher"
    worst = -math.inf if better == "higher" else math.inf
    if fig is None:
        return worst
    return fig.value if eligible(ctx.cfg, candidate_rows(ctx, key))[0] else worst


def measure_candidate(ctx: StudyContext, s: Session, key: str, settings: dict, look: int) -> None:
    """Restart into the candidate, confirm it, and measure one look (a closed loop of the stated clients)."""
    c = ctx.cfg
    s.restart(settings)
    check = confirm_settings(s, c.model)
    effective = {k: (v.get("effective") if v.get("status") == "not applied" else settings.get(k))
                 for k, v in (check.get("checks") or {}).items()}
    effective = {k: str(v) for k, v in {**settings, **effective}.items()}
    ctx.store.emit(TuningCandidate(key=key, settings=settings, look=look, effective=effective,
                                   all_applied=check.get("all_applied"), checks=check.get("checks"),
                                   error=check.get("error") or ""))
    if check.get("error"):  # the server can't serve the model with these settings: said, not measured
        return
    s.runner.closed_loop(c.model, c.concurrency, c.requests, series=f"cand/{key}/look{look}",
                         sampling=Sampling(c.num_predict, think=think_of(settings)), prompt_words=c.prompt_words,
                         tags={"candidate": key, "look": look})


def _distributions(space: dict[str, list]):
    import optuna

    # Ordinal values (numbers) by their position, so the sampler learns "more slots helps"; others as categories.
    return {k: (optuna.distributions.IntDistribution(0, len(v) - 1) if all(isinstance(x, (int, float)) and
                                                                          not isinstance(x, bool) for x in v)
                else optuna.distributions.CategoricalDistribution([str(x) for x in v])) for k, v in space.items()}


def _decode(space: dict[str, list], params: dict[str, Any]) -> dict[str, Any]:
    return {k: (space[k][v] if isinstance(v, int) and not isinstance(v, bool) else
                next(x for x in space[k] if str(x) == v)) for k, v in params.items()}


def _encode(space: dict[str, list], settings: dict[str, Any]) -> dict[str, Any] | None:
    dist = _distributions(space)
    out = {}
    for k, d in dist.items():
        if k not in settings:
            return None
        values = [str(x) for x in space[k]]
        if str(settings[k]) not in values:
            return None
        i = values.index(str(settings[k]))
        out[k] = i if hasattr(d, "low") else values[i]
    return out


def search(ctx: StudyContext, s: Session, space: dict[str, list], budget: Budget) -> None:
    """Optuna proposes, perfkit measures: up to ``candidates`` distinct settings (fewer when the space is smaller
    or the budget ends); a setting the server ran as another candidate's is merged, not measured twice."""
    import optuna

    c = ctx.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tag = objective_metric(c)[0]
    higher = F.metric(tag).better == "higher"
    study = optuna.create_study(direction="maximize" if higher else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=ctx.params.seed,
                                                                   n_startup_trials=min(4, c.candidates)))
    dists = _distributions(space)
    size = math.prod(len(v) for v in space.values())
    known = recorded_candidates(ctx)
    for key, d in known.items():  # a resumed search starts from what is recorded
        enc = _encode(space, d["settings"])
        if enc is not None:
            study.add_trial(optuna.trial.create_trial(params=enc, distributions=dists, value=_finite(_value(
                ctx, d["merged_into"] or key), higher)))
    tried, asked = set(known), 0
    per_candidate_s = 0.0
    with Progress(ctx.store.dir, "tuning: search", min(c.candidates, size), interactive=ctx.params.progress) as bar:
        bar.update(len(tried), "resumed" if tried else "")
        while len(tried) < min(c.candidates, size) and asked < 20 * c.candidates:
            if tried and budget.left_s() < per_candidate_s * 2:  # keep time to race and to prove the winner
                ctx.store.emit(TuningSearchStopped(why=BUDGET, candidates=len(tried)))
                break
            trial, asked = study.ask(dists), asked + 1
            settings = {**c.baseline, **_decode(space, trial.params)}
            key = settings_label(settings)
            if key in tried:
                study.tell(trial, _finite(_value(ctx, recorded_candidates(ctx)[key]["merged_into"] or key), higher))
                continue
            t0 = time.monotonic()
            bar.update(1, key)
            measure_candidate(ctx, s, key, settings, 1)
            tried.add(key)
            same = _same_as(ctx, key)
            if same:
                ctx.store.emit(TuningCandidate(key=key, settings=settings, merged_into=same))
            study.tell(trial, _finite(_value(ctx, same or key), higher))
            per_candidate_s = max(per_candidate_s, time.monotonic() - t0)


def _finite(v: float, higher: bool) -> float:
    return v if math.isfinite(v) else (-1e12 if higher else 1e12)


def _same_as(ctx: StudyContext, key: str) -> str | None:
    """An earlier candidate the server really ran the same way (a setting it ignored), or None."""
    cands = recorded_candidates(ctx)
    mine = cands[key].get("effective")
    for k, d in cands.items():
        if k != key and not d["merged_into"] and d.get("effective") == mine and mine:
            return k
    return None
