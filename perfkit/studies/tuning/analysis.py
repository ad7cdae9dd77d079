"""The tuning study's analysis, from recorded data only: every candidate and what became of it, the race's
claim, the winner's capacity, cold start and proof, its cost, and the files to deploy it."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.core.events import TuningDone, TuningSpace, last_of
from perfkit.core.units import BYTES, SECONDS, TOKENS
from perfkit.analysis import figures as F
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import error_summary, est, failures, ignored_think, measured, thought
from perfkit.core import fmt
from perfkit.core.settings import THINK, known_conflicts, value_of
from perfkit.studies.base import StudyContext

from . import deploy
from .capacity import capacity_bracket, parallel_slots, rate_verdicts
from .cold import cold_facts
from .objective import eligible, objective_figure, peak_rss, race_claim, slo_share
from .params import TuningParams, objective_metric, thinking_searched
from .proof import proof_figures
from .race import dropped_at
from .records import candidate_rows, recorded_candidates
from .results import TuningResult


def analyze(ctx: StudyContext) -> TuningResult:
    c = ctx.cfg
    df, ev = ctx.store.trials(), ctx.store.events()
    cands = recorded_candidates(ctx)
    looks = c.looks_plan()
    claim = race_claim(c, df, cands, looks.confidence)
    figs = FigureSet()
    rows = []
    dropped = dropped_at(ev)
    thinking = thinking_searched(c) or thought(df)
    for key, d in cands.items():
        r = candidate_rows(ctx, key)
        fig = objective_figure(c, r, key)
        ok, why = eligible(c, r) if len(r) else (False, "not measured")
        if fig is not None and not d["merged_into"]:
            figs.add(fig)
        served = len(measured(r)) > 0
        status = ("merged: the server ran it as " + d["merged_into"] if d["merged_into"] else
                  "the server could not run it: " + error_summary(d["error"] or _first_error(r), 120)
                  + "".join(f" ({x})" for x in known_conflicts(d["settings"])) if d["error"] or (len(r) and not served)
                  else
                  "not eligible: " + why if not ok else
                  "winner" if claim and key == claim.best and claim.called else
                  "leader (not separated)" if claim and key == claim.best else
                  f"equal to the leader within ±{claim.min_effect:.0%}" if claim and key in claim.equivalent else
                  "not separated from the leader" if claim and key in claim.not_separated else
                  f"dropped after look {dropped[key]}: the leader beats it" if key in dropped else
                  "beaten by the leader")
        rows.append({"setting": key, "looks": d["looks"], "n": len(measured(r)),
                     "objective": fig.text() if fig is not None else "—", "value": fig.value if fig else math.nan,
                     **(thinking_cells(r) if thinking else {}),
                     "inside the SLOs": fmt.pct(slo_share(c, r)), "peak RSS": BYTES.text(peak_rss(r)),
                     "settings confirmed": {True: "yes", False: "no", None: "—"}.get(d.get("all_applied"), "—"),
                     "status": status, "think": value_of(d["settings"], THINK)})
    table = pd.DataFrame(rows)
    winner = claim.best if claim else None
    proof = proof_figures(c, df, figs, winner)
    cold = cold_facts(c, df, winner)
    tag, what = objective_metric(c)
    if winner and figs.get(f"tuning/{tag}/{winner}") is not None:
        figs[f"tuning/{tag}/{winner}"].headline = "tuned " + c.objective
    capacity = capacity_bracket(c, df, winner, parallel_slots(cands[winner]["settings"]) if winner else None)
    if winner and math.isfinite(capacity[0]):
        figs.add(F.reading("tuning", "sustained_rate", capacity[0], where={"setting": winner},
                           note=f"of {capacity[2]} rates tried" + (f"; not sustained at {fmt.number(capacity[1])}"
                                                                    if math.isfinite(capacity[1]) else "")))
    cost = _cost(c, figs)
    stopped = (last_of(ev, TuningDone) or {}).get("stopped", "")
    space = (last_of(ev, TuningSpace) or {}).get("space", {})
    res = TuningResult("tuning", figs, df, ctx.store.manifest(), failures(df), objective=c.objective,
                       candidates=table, claim=claim, winner=winner,
                       winner_settings=cands[winner]["settings"] if winner else {}, baseline=dict(c.baseline),
                       proof=proof, cold=cold, stopped=stopped, looks=looks, space=space, capacity=capacity,
                       cost=cost, rate_verdicts=rate_verdicts(c, df, winner, parallel_slots(cands[winner]["settings"]))
                       if winner else {}, objective_tag=tag, objective_what=what, thinking=thinking,
                       ignored_think=ignored_think(measured(df)))
    if winner:
        res.files = deploy.write(ctx.store.dir / "tuned", res, ctx.params.backend.kind, ctx.run_dir.name, c.model)
    return res


def thinking_cells(rows: pd.DataFrame) -> dict[str, str]:
    """A candidate's first answer token beside its TTFT (a thinking request's first token is a thought) and its
    thinking tokens: medians over its requests, with CIs."""
    ok = measured(rows)

    def median(column: str):
        return est(pd.to_numeric(ok[column], errors="coerce").dropna()) if column in ok else est([])

    tokens = median("thinking_tokens")
    return {"TTFT": SECONDS.estimate(median("ttft_s")), "first answer token": SECONDS.estimate(median("ttfa_s")),
            "thinking tokens": TOKENS.estimate(tokens), "thinking_median": tokens.value}


def _first_error(rows: pd.DataFrame) -> str:
    errs = rows["error"].dropna() if "error" in rows else []
    return str(errs.iloc[0]) if len(errs) else "no request succeeded"


def _cost(c: TuningParams, figs: FigureSet) -> dict[str, float]:
    """$ per million output tokens at the tuned throughput (and at today's), from the GPU-hour price."""
    if not c.gpu_hour_usd:
        return {}
    out = {}
    for side in ("before", "after"):
        f = figs.get(f"tuning/stream_throughput/{side}/{c.concurrency}")
        if f is not None and f.value > 0:
            out[side] = c.gpu_hour_usd / (f.value * 3600) * 1e6
    return out
