"""The race: the eligible candidates measured again in planned looks, the ones the leader beats dropped at each,
until the leader is settled or the looks or the budget end."""

from __future__ import annotations

import time

import pandas as pd

from perfkit.core.events import TuningDone, TuningLook, records_of
from perfkit.analysis.sequential import ANSWERED, BUDGET, LAST_LOOK
from perfkit.measure.sequential import Budget
from perfkit.measure.session import Session
from perfkit.studies.base import StudyContext

from .objective import race_claim
from .records import recorded_candidates
from .search import measure_candidate


def race(ctx: StudyContext, s: Session, budget: Budget) -> str | None:
    """The eligible candidates race in looks until the leader is settled (called, or equal to the rest) or the
    looks or the budget end; the beaten are dropped at each look. Returns the leader, or None when none is
    eligible."""
    c = ctx.cfg
    looks = c.looks_plan()
    look_s = 0.0
    stopped = LAST_LOOK
    for look in range(2, c.looks + 1):
        claim = race_claim(ctx.cfg, ctx.store.trials(), recorded_candidates(ctx), looks.confidence)
        if claim is None:
            break
        if claim.settled:
            stopped = ANSWERED
            break
        survivors = [claim.best] + claim.not_separated
        ctx.store.emit(TuningLook(look=look, survivors=survivors,
                                  dropped=[k for k in claim.rows if k not in claim.not_separated]))
        if budget.left_s() < look_s * len(survivors) * 1.5:
            stopped = BUDGET
            break
        for key in survivors:
            if recorded_candidates(ctx)[key]["looks"] >= look:
                continue
            t0 = time.monotonic()
            measure_candidate(ctx, s, key, recorded_candidates(ctx)[key]["settings"], look)
            look_s = max(look_s, time.monotonic() - t0)
    else:
        claim = race_claim(ctx.cfg, ctx.store.trials(), recorded_candidates(ctx), looks.confidence)
        stopped = ANSWERED if claim is not None and claim.settled else LAST_LOOK
    claim = race_claim(ctx.cfg, ctx.store.trials(), recorded_candidates(ctx), looks.confidence)
    ctx.store.emit(TuningDone(stopped=stopped, winner=claim.best if claim else None))
    return claim.best if claim else None


def dropped_at(ev: pd.DataFrame) -> dict[str, int]:
    """Candidate → the last look it was measured in before the race dropped it."""
    out: dict[str, int] = {}
    for r in records_of(ev, TuningLook):
        for k in r.get("dropped") or []:
            out.setdefault(k, int(r["look"]) - 1)
    return out
