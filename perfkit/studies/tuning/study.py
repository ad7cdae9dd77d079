"""The tuning study: search, race, capacity, cold start and proof, in that order, on one server session."""

from __future__ import annotations

from typing import Any

from perfkit import kinds
from perfkit.core.events import TuningSpace
from perfkit.core import settings as SV
from perfkit.measure.sequential import Budget
from perfkit.studies.base import Study, StudyContext, settings_preflight
from perfkit.studies.registry import register

from .analysis import analyze
from .capacity import measure_capacity
from .cold import measure_cold
from .params import TuningParams, search_space
from .proof import measure_proof
from .race import race
from .report import conclusions
from .results import TuningResult
from .search import search


def _restarts_preflight(params: Any) -> list[str]:
    """The proof and the winner's cold start restart the server even where only request options (``think``) are
    searched: the problem when perfkit can't restart it."""
    b = params.backend
    caps = kinds.capabilities(b.kind)
    if caps.started_by_perfkit or (caps.settings_by_restart_command and b.restart_command):
        return []
    how = (f"set backend.restart_command{kinds.get(b.kind).restart_hint}" if caps.settings_by_restart_command else
           f"a backend of kind {b.kind!r} can't be restarted by perfkit")
    return ["studies.tuning: the proof (today's settings against the tuned ones) and the tuned settings' cold start "
            f"restart the server, even when only request options such as think are searched; {how}"]


@register
class Tuning(Study):
    name = "tuning"
    title = "Tuning: the settings this server should run"
    question = "Which settings should this server run, how much better are they than today's, and how to deploy them?"
    Params = TuningParams
    order = 47

    def preflight(self, params: Any) -> list[str]:
        c = params.studies.tuning
        space = search_space(c, params.backend.kind)
        out = settings_preflight(params, "studies.tuning.space", [dict(c.baseline), {k: v[0] for k, v in space.items()}])
        if not out and space:
            out += _restarts_preflight(params)
        if not space:
            out.append(f"studies.tuning.space: the {params.backend.kind} kind offers no settings to tune and none "
                       f"are given; name some, e.g. space: {{{SV.name_of(SV.PARALLEL)}: [1, 2, 4]}}")
        return out

    def measure(self, ctx: StudyContext) -> None:
        c, budget = ctx.cfg, Budget(ctx.cfg.budget_s)
        with ctx.session(c.baseline, server_metrics=True) as s:
            space = search_space(c, ctx.params.backend.kind)
            ctx.store.emit(TuningSpace(space=space))
            search(ctx, s, space, budget)
            winner = race(ctx, s, budget)
            if winner is None:
                return
            measure_capacity(ctx, s, winner)
            measure_cold(ctx, s, winner)
            measure_proof(ctx, s, winner)

    def analyze(self, ctx: StudyContext) -> TuningResult:
        return analyze(ctx)

    def conclusions(self, result: TuningResult) -> str:
        return conclusions(result)
