"""Tuning: from the settings a server runs to the settings it should run — searched, separated, proven, written out.

The search space is the server kind's own (its backend's ``tuning_space``), narrowed or widened by ``space:``.
Optuna's sampler proposes which setting to measure next (ordinal settings by their position, so a space of a
hundred combinations fits a budget of tens of candidates); every candidate is restarted into, confirmed from the
server's own evidence (a setting the server ignored merges the candidate with the one it really ran) and measured
with a closed loop of ``concurrency`` clients. Then the candidates race in planned looks
(:class:`perfkit.analysis.sequential.Looks`): each look measures the survivors again after a restart, the ones the
leader beats beyond the minimum effect, Holm-adjusted over the candidates, are dropped, until the leader is called
or shown equal to the rest, or the budget ends. The winner's cold start is measured (keep-alive and proxy advice),
and the winner is proven against the starting settings, both restarted in turn (runs as the unit). The settings
to deploy are written out for each server kind (environment files, a systemd drop-in, a command line) and nginx.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator

from perfkit.analysis import figures as F, series as S, stats
from perfkit.analysis.capacity import BRACKET_RATIO, NOT_SUSTAINED, SUSTAINED, rate_verdict
from perfkit.analysis.series import CANT_TELL
from perfkit.analysis.decisions import BestClaim, best_of
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import error_summary, failures, measured, method_note, noisy_note
from perfkit.analysis.sequential import ANSWERED, BUDGET, LAST_LOOK, Looks
from perfkit import kinds
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core import settings as SV
from perfkit.core.units import BYTES, REQUESTS_PER_S, SECONDS
from perfkit.core.errors import ConfigError
from perfkit.core.events import (TuningCandidate, TuningDone, TuningLook, TuningSearchStopped, TuningSpace, last_of,
                                  records_of)
from perfkit.core.schema import MAX_PROMPT_WORDS, MAX_REQUESTS, MAX_TOKENS, Slo, Strict
from perfkit.core.settings import known_conflicts, settings_label, validate_settings
from perfkit.measure.confirm import confirm_settings
from perfkit.measure.progress import Progress
from perfkit.measure.runner import Trial
from perfkit.measure.sequential import Budget
from perfkit.report.answer import answer_block
from perfkit.studies.base import Study, StudyContext, StudyResult, settings_preflight
from perfkit.studies.registry import register

OBJECTIVES = {  # objective → (metric tag, what it is in words)
    "rate": ("request_rate", "the request rate the clients sustain inside the SLOs"),
    "throughput": ("stream_throughput", "the output throughput the clients sustain inside the SLOs"),
    "ttft": ("ttft", "the time to first token at that many clients"),
}
SLO_SHARE = 0.9  # a candidate is feasible when at least this share of its requests meets every SLO


class TuningParams(Strict):
    """``studies.tuning``: the model, the objective and constraints, the space, and how much to measure."""

    model: str
    objective: Literal["rate", "throughput", "ttft"] = "rate"
    concurrency: int = Field(4, ge=1, le=256, description="the clients the objective is measured at")
    slo: Slo = Field(default_factory=Slo)
    memory_limit_bytes: float | None = Field(None, gt=0, description="a candidate whose server RSS peaks above "
                                             "this is not eligible")
    context_length: int | None = Field(None, ge=1, description="the context the users need: candidates with a "
                                       "smaller context length are not tried")
    space: dict[str, list[Any] | None] | None = Field(None, description=(
        "setting → the values to search (null: the server kind's own values for it); unset: the kind's whole space"))
    baseline: dict[str, Any] = Field(default_factory=dict, description="the settings the server runs today (the "
                                     "'before' of the proof); empty: the server's defaults")
    candidates: int = Field(8, ge=1, le=200, description="how many settings the search measures at most")
    requests: int = Field(12, ge=2, le=MAX_REQUESTS, description="requests per candidate at each look")
    looks: int = Field(3, ge=1, le=10, description="looks per candidate at most: the search's, then the race's")
    replicates: int = Field(3, ge=1, le=20, description="the proof: restarts of each side, interleaved")
    proof_requests: int = Field(8, ge=2, le=MAX_REQUESTS)
    cold_reps: int = Field(3, ge=1, le=50, description="cold starts of the winner (keep-alive and proxy advice)")
    capacity_steps: int = Field(3, ge=0, le=8, description="open-loop rates tried around the winner's closed-loop "
                                "rate to bracket the highest rate it sustains inside the SLOs; 0: not measured")
    rate_requests: int = Field(16, ge=4, le=MAX_REQUESTS, description="requests per open-loop rate")
    gpu_hour_usd: float | None = Field(None, gt=0, description="what an hour of the server's GPUs costs: gives $ "
                                       "per million output tokens at the winner's throughput")
    budget_s: float | None = Field(None, gt=0, description="the search and the race: no new candidate or look "
                                   "starts once it would be spent (the capacity, cold start and proof come after)")
    num_predict: int = Field(16, ge=1, le=MAX_TOKENS)
    prompt_words: int = Field(24, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v):
        try:
            validate_settings(v)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("settings: ")) from None
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v):
        for k, values in (v or {}).items():
            if values is None:
                validate_settings_name(k)
                continue
            if not isinstance(values, list) or not values:
                raise ValueError(f"{k}: a non-empty list of values to try, or null for the server kind's own")
            try:
                for x in values:
                    validate_settings({k: x})
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("settings: ")) from None
        return v

    def looks_plan(self) -> Looks:
        return Looks(1, self.looks)


def validate_settings_name(name: str) -> None:
    try:
        SV.role_of(name)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def search_space(c: TuningParams, kind: str) -> dict[str, list[Any]]:
    """The space searched: the kind's own when ``space:`` is unset; else exactly the settings ``space:`` names,
    each with its values, or the kind's values where it gives none (``NAME: null``). A context length the users
    need removes the smaller ones."""
    offered = kinds.tuning_space(kind)
    space = offered if c.space is None else {k: list(v) if v is not None else offered.get(k, [])
                                             for k, v in c.space.items()}
    ctx_name = next((k for k in space if SV.role_of(k) == SV.CONTEXT_LENGTH), SV.name_of(SV.CONTEXT_LENGTH))
    if c.context_length and ctx_name in space:
        space[ctx_name] = [x for x in space[ctx_name] if int(x) >= c.context_length]
    elif c.context_length:
        space[ctx_name] = [c.context_length]
    return {k: v for k, v in space.items() if v}


@dataclass
class TuningResult(StudyResult):
    objective: str = "rate"
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    claim: BestClaim | None = None
    winner: str | None = None
    winner_settings: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    proof: list = field(default_factory=list)
    cold: dict[str, Any] = field(default_factory=dict)
    stopped: str = ""
    looks: Looks = field(default_factory=lambda: Looks(1))
    files: dict[str, str] = field(default_factory=dict)
    space: dict[str, list] = field(default_factory=dict)
    capacity: tuple[float, float, int] = (math.nan, math.nan, 0)
    rate_verdicts: dict[float, str] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)


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
        if not space:
            out.append(f"studies.tuning.space: the {params.backend.kind} kind offers no settings to tune and none "
                       f"are given; name some, e.g. space: {{{SV.name_of(SV.PARALLEL)}: [1, 2, 4]}}")
        return out

    def measure(self, ctx: StudyContext) -> None:
        c, budget = ctx.cfg, Budget(ctx.cfg.budget_s)
        with ctx.session(c.baseline, server_metrics=True) as s:
            space = search_space(c, ctx.params.backend.kind)
            ctx.store.emit(TuningSpace(space=space))
            _search(ctx, s, space, budget)
            winner = _race(ctx, s, budget)
            if winner is None:
                return
            _capacity(ctx, s, winner)
            _cold(ctx, s, winner)
            _proof(ctx, s, winner)

    def analyze(self, ctx: StudyContext) -> TuningResult:
        return analyze(ctx)

    def conclusions(self, result: TuningResult) -> str:
        return conclusions(result)


# ---- measuring ------------------------------------------------------------------------------------------------

def _candidates(ctx: StudyContext) -> dict[str, dict]:
    """key → the candidate as recorded (its settings, what the server ran, the looks measured, merged into)."""
    out: dict[str, dict] = {}
    for r in records_of(ctx.store.events(), TuningCandidate):
        d = out.setdefault(r["key"], {"key": r["key"], "settings": r["settings"], "looks": 0, "merged_into": None,
                                      "effective": r.get("effective"), "all_applied": None, "error": ""})
        if isinstance(r.get("merged_into"), str):
            d["merged_into"] = r["merged_into"]
        if isinstance(r.get("all_applied"), bool):
            d["all_applied"] = r["all_applied"]
        if isinstance(r.get("error"), str) and r["error"]:
            d["error"] = r["error"]
        if r.get("look") is not None:
            d["looks"] = max(d["looks"], int(r["look"]))
    return out


def _rows(ctx: StudyContext, key: str) -> pd.DataFrame:
    df = ctx.store.trials()
    if df.empty or "candidate" not in df:
        return df.iloc[0:0]
    return df[(df["candidate"] == key) & df["series"].astype(str).str.startswith("cand/")]


def _value(ctx: StudyContext, key: str) -> float:
    """The candidate's objective so far (NaN when nothing measured; −inf/inf when it is not eligible)."""
    fig = objective_figure(ctx.cfg, _rows(ctx, key), key)
    better = fig.better if fig is not None else "higher"
    worst = -math.inf if better == "higher" else math.inf
    if fig is None:
        return worst
    return fig.value if eligible(ctx.cfg, _rows(ctx, key))[0] else worst


def _measure(ctx: StudyContext, s, key: str, settings: dict, look: int) -> None:
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
                         sampling=Sampling(c.num_predict), prompt_words=c.prompt_words,
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


def _search(ctx: StudyContext, s, space: dict[str, list], budget: Budget) -> None:
    """Optuna proposes, perfkit measures: up to ``candidates`` distinct settings (fewer when the space is smaller
    or the budget ends); a setting the server ran as another candidate's is merged, not measured twice."""
    import optuna

    c = ctx.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tag = OBJECTIVES[c.objective][0]
    higher = F.metric(tag).better == "higher"
    study = optuna.create_study(direction="maximize" if higher else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=ctx.params.seed,
                                                                   n_startup_trials=min(4, c.candidates)))
    dists = _distributions(space)
    size = math.prod(len(v) for v in space.values())
    known = _candidates(ctx)
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
                study.tell(trial, _finite(_value(ctx, _candidates(ctx)[key]["merged_into"] or key), higher))
                continue
            t0 = time.monotonic()
            bar.update(1, key)
            _measure(ctx, s, key, settings, 1)
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
    cands = _candidates(ctx)
    mine = cands[key].get("effective")
    for k, d in cands.items():
        if k != key and not d["merged_into"] and d.get("effective") == mine and mine:
            return k
    return None


def _race(ctx: StudyContext, s, budget: Budget) -> str | None:
    """The eligible candidates race in looks until the leader is settled (called, or equal to the rest) or the
    looks or the budget end; the beaten are dropped at each look. Returns the leader, or None when none is
    eligible."""
    c = ctx.cfg
    looks = c.looks_plan()
    look_s = 0.0
    stopped = LAST_LOOK
    for look in range(2, c.looks + 1):
        claim = race_claim(ctx.cfg, ctx.store.trials(), _candidates(ctx), looks.confidence)
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
            if _candidates(ctx)[key]["looks"] >= look:
                continue
            t0 = time.monotonic()
            _measure(ctx, s, key, _candidates(ctx)[key]["settings"], look)
            look_s = max(look_s, time.monotonic() - t0)
    else:
        claim = race_claim(ctx.cfg, ctx.store.trials(), _candidates(ctx), looks.confidence)
        stopped = ANSWERED if claim is not None and claim.settled else LAST_LOOK
    claim = race_claim(ctx.cfg, ctx.store.trials(), _candidates(ctx), looks.confidence)
    ctx.store.emit(TuningDone(stopped=stopped, winner=claim.best if claim else None))
    return claim.best if claim else None


def _capacity(ctx: StudyContext, s, winner: str) -> None:
    """Open-loop rates (requests on a schedule, latency timed from it) around the winner's closed-loop rate, until
    the highest rate it sustains inside the SLOs is bracketed (:mod:`perfkit.analysis.capacity`) or the steps run
    out. Each next rate is decided from the recorded series only, so a resumed run tries the same ones."""
    c = ctx.cfg
    if not c.capacity_steps:
        return
    settings = _candidates(ctx)[winner]["settings"]
    s.restart(settings)
    for step in range(c.capacity_steps):
        rate = next_rate(c, ctx.store.trials(), winner, _slots(settings))
        if rate is None:
            break
        s.runner.open_loop(c.model, rate, c.rate_requests, series=f"capacity/r{rate:g}",
                           seed=ctx.params.seed + step, sampling=Sampling(c.num_predict), prompt_words=c.prompt_words,
                           tags={"candidate": winner, "phase": "capacity", "rate_rps": rate})


def _slots(settings: dict) -> int | None:
    v = SV.value_of(settings, SV.PARALLEL)
    return int(v) if v is not None else None


def rate_verdicts(c: TuningParams, df: pd.DataFrame, winner: str, slots: int | None) -> dict[float, str]:
    """Each open-loop rate tried on the winner → sustained, not sustained, or can't tell (``slots``: its parallel
    slots, which the trend reads its capacity by)."""
    if df.empty or "phase" not in df:
        return {}
    rows = df[(df["phase"] == "capacity") & (df["candidate"] == winner)]
    if rows.empty or "rate_rps" not in rows:
        return {}
    return {float(r): rate_verdict(S.last_attempt(g), c.slo, slots)[0]
            for r, g in rows.groupby("rate_rps", sort=True)}


def next_rate(c: TuningParams, df: pd.DataFrame, winner: str, slots: int | None) -> float | None:
    """0.7× the winner's closed-loop rate first, then 1.4×; then double the highest when all were sustained, halve
    the lowest when none was, or the geometric middle of a bracket wider than :data:`BRACKET_RATIO`; None once
    bracketed that closely."""
    verdicts = rate_verdicts(c, df, winner, slots)
    if not verdicts:
        search = df[(df.get("candidate") == winner) & df["series"].astype(str).str.startswith("cand/")] \
            if len(df) and "candidate" in df else df.iloc[0:0]
        # Per series (each look restarted the server): pooled, the gaps between looks would count as idle time.
        rates = [S.request_rate(S.last_attempt(g)) for _, g in search.groupby("series")] if len(search) else []
        closed = float(pd.Series(rates).median()) if rates else math.nan
        return float(f"{0.7 * closed:.2g}") if closed > 0 else None
    tried = sorted(verdicts)
    ok = [r for r in tried if verdicts[r] == SUSTAINED]
    no = [r for r in tried if verdicts[r] == NOT_SUSTAINED and (not ok or r > max(ok))]
    if len(tried) == 1:
        nxt = 2 * tried[0]
    elif ok and no:
        if no[0] / max(ok) <= BRACKET_RATIO:
            return None
        nxt = math.sqrt(max(ok) * no[0])
    elif ok:
        nxt = 2 * tried[-1]
    elif no:
        nxt = tried[0] / 2
    else:
        return None
    nxt = float(f"{nxt:.2g}")
    return nxt if nxt > 0 and nxt not in tried else None


def capacity_bracket(c: TuningParams, df: pd.DataFrame, winner: str | None, slots: int | None
                     ) -> tuple[float, float, int]:
    """(highest rate shown sustained, lowest rate above it shown not sustained, rates tried); NaN where not shown."""
    if winner is None:
        return math.nan, math.nan, 0
    v = rate_verdicts(c, df, winner, slots)
    ok = [r for r, x in v.items() if x == SUSTAINED]
    top = max(ok) if ok else math.nan
    above = [r for r, x in v.items() if x == NOT_SUSTAINED and (not ok or r > top)]
    return top, (min(above) if above else math.nan), len(v)


def _cold(ctx: StudyContext, s, winner: str) -> None:
    """The winner's first request after a restart, ``cold_reps`` times: what keeping the model warm avoids."""
    c = ctx.cfg
    s.restart(_candidates(ctx)[winner]["settings"])
    s.runner.run([Trial(f"cold/{winner}/rep{i}", c.model, "cold_server", i, False, winner, c.prompt_words,
                        Sampling(c.num_predict), tags={"candidate": winner, "phase": "cold"})
                  for i in range(c.cold_reps)], desc="tuning: the winner's cold start")


def _proof(ctx: StudyContext, s, winner: str) -> None:
    """Before (the baseline) against after (the winner), each restarted ``replicates`` times in turn; each restart
    gives one cold first request and a closed loop of the stated clients."""
    c = ctx.cfg
    sides = {"before": dict(c.baseline), "after": _candidates(ctx)[winner]["settings"]}
    with Progress(ctx.store.dir, "tuning: proof (before and after, restarted in turn)", 2 * c.replicates,
                  interactive=ctx.params.progress) as bar:
        for r in range(c.replicates):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                bar.update(1, f"{side}, restart {r + 1}")
                s.restart(sides[side])
                tags = {"proof": side, "replicate": r + 1, "candidate": winner if side == "after" else "baseline"}
                s.runner.run([Trial(f"proof/{side}/r{r}/cold", c.model, "cold_server", r, False, side,
                                    c.prompt_words, Sampling(c.num_predict), tags=tags)], desc="proof: cold start")
                s.runner.closed_loop(c.model, c.concurrency, c.proof_requests, series=f"proof/{side}/r{r}",
                                     sampling=Sampling(c.num_predict), prompt_words=c.prompt_words, tags=tags)


# ---- analysis -------------------------------------------------------------------------------------------------

def steady(rows: pd.DataFrame, concurrency: int) -> pd.DataFrame:
    """Each closed-loop series' requests inside its steady window: the start, when every client sends at once and
    the first wait behind the others, and the end, when clients run out, are not the server's sustained rate."""
    if rows.empty or "series" not in rows:
        return rows
    parts = [S.in_window(g, S.steady_window(g, concurrency)) for _, g in rows.groupby("series", sort=False)]
    return pd.concat(parts) if parts else rows


def served(rows: pd.DataFrame, per: str = "requests") -> list[float]:
    """Per request: what the server completed while it was in flight ÷ its e2e — requests/s, or output tokens/s with
    ``per="tokens"``. The server's rate as each request saw it, whatever its place in the queue (c ÷ e2e would make
    the first of a burst look fast and the last slow)."""
    import numpy as np

    out: list[float] = []
    for _, g in rows.groupby("series", sort=False) if "series" in rows and len(rows) else ():
        done = g[g["ok"].astype("boolean").fillna(False).astype(bool)].dropna(subset=["t_send_ns", "t_end_ns"])
        if done.empty:
            continue
        order = np.argsort(done["t_end_ns"].astype("int64").to_numpy())
        ends = done["t_end_ns"].astype("int64").to_numpy()[order]
        weight = (pd.to_numeric(done["output_tokens"], errors="coerce").fillna(0).to_numpy()[order]
                  if per == "tokens" else np.ones(len(ends)))
        cum = np.concatenate([[0.0], np.cumsum(weight)])
        for send, end in zip(done["t_send_ns"].astype("int64"), done["t_end_ns"].astype("int64")):
            span = (end - send) / 1e9
            if span > 0:
                k = cum[np.searchsorted(ends, end, "right")] - cum[np.searchsorted(ends, send, "right")]
                out.append(float(k / span))
    return out


def _objective_values(c: TuningParams, rows: pd.DataFrame) -> list[float]:
    """The objective per steady request: its TTFT, or the server's rate while it was in flight (:func:`served`)."""
    inside = steady(rows, c.concurrency)
    if c.objective == "ttft":
        return list(measured(inside)["ttft_s"].dropna())
    return _served_in(rows, inside, "tokens" if c.objective == "throughput" else "requests")


def _served_in(rows: pd.DataFrame, inside: pd.DataFrame, per: str) -> list[float]:
    """:func:`served` for the steady requests, counting every completion of their series (steady or not)."""
    if inside.empty or "trial_id" not in rows:
        return []
    keep = set(measured(inside)["trial_id"])
    out = []
    for _, g in rows.groupby("series", sort=False):
        vals = served(g, per)
        ok = g[g["ok"].astype("boolean").fillna(False).astype(bool)].dropna(subset=["t_send_ns", "t_end_ns"])
        ok = ok[(ok["t_end_ns"].astype("int64") - ok["t_send_ns"].astype("int64")) > 0]
        out += [v for v, t in zip(vals, ok["trial_id"]) if t in keep]
    return out


def objective_figure(c: TuningParams, rows: pd.DataFrame, key: str, where: dict | None = None) -> F.Figure | None:
    tag = OBJECTIVES[c.objective][0]
    return F.per_request("tuning", tag, rows, lambda r: _objective_values(c, r), where=where or {"setting": key},
                         workload=_workload(c))


def slo_share(c: TuningParams, rows: pd.DataFrame) -> float:
    """The share of the requests that met every SLO (a failed request never does)."""
    if rows.empty:
        return math.nan
    ok = rows["ok"].astype("boolean").fillna(False).astype(bool)
    meets = ok.copy()
    ttft = pd.to_numeric(rows.get("ttft_s"), errors="coerce")
    tpot = pd.to_numeric(rows.get("tpot_s"), errors="coerce")
    if c.slo.ttft_s is not None:
        meets &= ttft.le(c.slo.ttft_s).fillna(False)
    if c.slo.tpot_s is not None and tpot is not None:
        meets &= tpot.le(c.slo.tpot_s).fillna(True)
    if c.slo.e2e_s is not None:
        meets &= pd.to_numeric(rows.get("e2e_s"), errors="coerce").le(c.slo.e2e_s).fillna(False)
    return float(meets.mean())


def peak_rss(rows: pd.DataFrame) -> float:
    return float(rows["res_server_rss_bytes_max"].max()) if "res_server_rss_bytes_max" in rows and len(rows) \
        and rows["res_server_rss_bytes_max"].notna().any() else math.nan


def eligible(c: TuningParams, rows: pd.DataFrame) -> tuple[bool, str]:
    """Whether a candidate may win: its requests meet the SLOs often enough and its memory fits; else why not."""
    share = slo_share(c, rows)
    if not math.isfinite(share) or share < SLO_SHARE:
        return False, f"{fmt.pct(share)} of its requests met the SLOs (needs {SLO_SHARE:.0%})"
    rss = peak_rss(rows)
    if c.memory_limit_bytes and math.isfinite(rss) and rss > c.memory_limit_bytes:
        return False, f"its server RSS peaked at {fmt.size(rss)}, above the {fmt.size(c.memory_limit_bytes)} limit"
    return True, ""


def race_claim(c: TuningParams, df: pd.DataFrame, cands: dict[str, dict], confidence: float) -> BestClaim | None:
    """The best eligible candidate as a tested claim at ``confidence`` (each candidate's requests over its looks)."""
    if df.empty or "candidate" not in df:
        return None
    search = df[df["series"].astype(str).str.startswith("cand/")]
    figs = {}
    for key, d in cands.items():
        if d["merged_into"]:
            continue
        rows = search[search["candidate"] == key]
        if eligible(c, rows)[0]:
            fig = objective_figure(c, rows, key)
            if fig is not None:
                figs[key] = fig
    return best_of(figs, confidence=confidence) if figs else None


def _workload(c: TuningParams) -> dict[str, Any]:
    return {"prompt_words": c.prompt_words, "num_predict": c.num_predict, "concurrency": c.concurrency,
            **{f"slo_{k}": v for k, v in c.slo.model_dump().items() if v is not None}}


def analyze(ctx: StudyContext) -> TuningResult:
    c = ctx.cfg
    df, ev = ctx.store.trials(), ctx.store.events()
    cands = _candidates(ctx)
    looks = c.looks_plan()
    claim = race_claim(c, df, cands, looks.confidence)
    figs = FigureSet()
    rows = []
    dropped = _dropped(ev)
    for key, d in cands.items():
        r = _rows(ctx, key)
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
                     "inside the SLOs": fmt.pct(slo_share(c, r)), "peak RSS": BYTES.text(peak_rss(r)),
                     "settings confirmed": {True: "yes", False: "no", None: "—"}.get(d.get("all_applied"), "—"),
                     "status": status})
    table = pd.DataFrame(rows)
    winner = claim.best if claim else None
    proof = _proof_figures(c, df, figs, winner)
    cold = _cold_facts(c, df, winner)
    if winner and figs.get(f"tuning/{OBJECTIVES[c.objective][0]}/{winner}") is not None:
        figs[f"tuning/{OBJECTIVES[c.objective][0]}/{winner}"].headline = "tuned " + c.objective
    capacity = capacity_bracket(c, df, winner, _slots(cands[winner]["settings"]) if winner else None)
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
                       cost=cost, rate_verdicts=rate_verdicts(c, df, winner, _slots(cands[winner]["settings"]))
                       if winner else {})
    if winner:
        from perfkit.studies import tuning_deploy

        res.files = tuning_deploy.write(ctx.store.dir / "tuned", res, ctx.params.backend.kind, ctx.run_dir.name,
                                        c.model)
    return res


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


def _dropped(ev: pd.DataFrame) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records_of(ev, TuningLook):
        for k in r.get("dropped") or []:
            out.setdefault(k, int(r["look"]) - 1)
    return out


def _proof_figures(c: TuningParams, df: pd.DataFrame, figs: FigureSet, winner: str | None) -> list[tuple[str, str, str]]:
    """The proof's figures per side (each restart one replicate) and the before/after pairs; returns the pairs
    (row, before key, after key)."""
    if df.empty or "proof" not in df or winner is None:
        return []
    pairs = []
    wl = _workload(c)
    for side in ("before", "after"):
        rows = df[df["proof"] == side]
        warm, cold = rows[~rows["trial_id"].astype(str).str.endswith("/cold")], rows[rows["trial_id"].astype(str).str.endswith("/cold")]
        where = {"side": side}
        figs.add(F.per_request("tuning", "e2e", cold, "e2e_s", where={**where, "state": "cold_server"}, workload=wl,
                               headline="cold start" if side == "after" else ""))
        figs.add(F.per_request("tuning", "ttft", warm, "ttft_s", where={**where, "clients": c.concurrency}, workload=wl,
                               headline="warm start" if side == "after" else ""))
        figs.add(F.per_request("tuning", "request_rate", warm,
                               lambda r: _objective_values(c.model_copy(update={"objective": "rate"}), r),
                               where={**where, "clients": c.concurrency}, workload=wl))
        figs.add(F.per_request("tuning", "stream_throughput", warm,
                               lambda r: _objective_values(c.model_copy(update={"objective": "throughput"}), r),
                               where={**where, "clients": c.concurrency}, workload=wl))
        # One value per restart (its largest RSS sample): the restarts are the replicates a run-level test needs.
        peaks = [peak_rss(g) for _, g in warm.groupby("replicate")] if "replicate" in warm else []
        peaks = [p for p in peaks if math.isfinite(p)]
        if peaks:
            est = stats.Estimate("max", max(peaks), math.nan, math.nan, len(peaks),
                                 method=f"the largest RSS sample of each of {len(peaks)} restarts; the largest shown")
            figs.add(F.from_estimate("tuning", "peak_rss", est, warm, where=where, per_replicate=peak_rss,
                                     headline="memory" if side == "after" else ""))
    clients = f"{c.concurrency} client{'s' if c.concurrency != 1 else ''}"
    for row, tag, extra in (("first request after a restart", "e2e", "/cold_server"),
                            (f"time to first token ({clients})", "ttft", f"/{c.concurrency}"),
                            (f"request rate at {clients}", "request_rate", f"/{c.concurrency}"),
                            (f"output throughput at {clients}", "stream_throughput", f"/{c.concurrency}"),
                            ("peak server memory", "peak_rss", "")):
        b, a = f"tuning/{tag}/before{extra}", f"tuning/{tag}/after{extra}"
        figs.pair(F.Pair(row, b, a, "today's settings" + (f" ({settings_label(c.baseline)})" if c.baseline else
                                                           " (the server's defaults)"), f"tuned ({winner})"))
        pairs.append((row, b, a))
    return pairs


def _cold_facts(c: TuningParams, df: pd.DataFrame, winner: str | None) -> dict[str, Any]:
    """The winner's cold start against its warm requests: what keep-alive avoids, and the proxy timeout it needs."""
    if df.empty or "phase" not in df or winner is None:
        return {}
    cold = measured(df[df["phase"] == "cold"])
    warm = measured(df[(df.get("candidate") == winner) & df["series"].astype(str).str.startswith("cand/")])
    if cold.empty:
        return {}
    worst = float(pd.to_numeric(cold["e2e_s"]).max())
    return {"cold_e2e": F.per_request("tuning", "e2e", cold, "e2e_s", where={"setting": winner, "state": "cold_server"}),
            "warm_e2e_s": float(pd.to_numeric(warm["e2e_s"]).median()) if len(warm) else math.nan,
            "load_s": float(pd.to_numeric(cold.get("load_s"), errors="coerce").median()) if "load_s" in cold else math.nan,
            "rss_bytes": peak_rss(warm), "worst_cold_s": worst,
            "proxy_read_timeout_s": max(60, int(math.ceil(worst * 3 / 10.0) * 10))}


# ---- conclusions ----------------------------------------------------------------------------------------------

def answer(res: TuningResult) -> list[str]:
    """The recommendation first: what to run, by how much it beats today's settings, and how sure that is."""
    if res.winner is None:
        return ["No candidate met the SLOs" + (" and the memory limit" if res.candidates is not None else "") +
                ": nothing to recommend; relax the SLOs or widen the space."]
    what = OBJECTIVES[res.objective][1]
    claim = res.claim
    fig = res.figures.get(f"tuning/{OBJECTIVES[res.objective][0]}/{res.winner}")
    if claim.called:
        out = [f"Run **{res.winner}**: it is the best for {what} ({fig.link() if fig else ''}), beating every "
               f"other candidate beyond ±{claim.min_effect:.0%}."]
    elif claim.settled and len(claim.not_separated) == len(claim.rows):
        out = [f"No setting tried changes {what}: all {len(claim.rows) + 1} are equal within "
               f"±{claim.min_effect:.0%} (the leader by point estimate, **{res.winner}**, included); today's settings "
               "are as good as any of them."]
    elif claim.settled:
        beaten = [k for k in claim.rows if k not in claim.not_separated]
        out = [f"Run **{res.winner}** or, equally within ±{claim.min_effect:.0%}, "
               f"{', '.join(f'**{k}**' for k in claim.not_separated)}: for {what} they beat "
               f"{', '.join(f'**{k}**' for k in beaten)}."]
    else:
        why = "before the time budget was spent" if res.stopped == BUDGET else "within the planned looks"
        out = [f"**{res.winner}** leads for {what} ({fig.link() if fig else ''}) but is not separated {why} from "
               f"{', '.join(f'**{k}**' for k in claim.not_separated)}: any of them is as good as the data can tell."]
    wanted = {"rate": "request rate", "throughput": "output throughput", "ttft": "time to first token"}[res.objective]
    row = next((r for r in _pair_rows(res) if r.what.startswith(wanted)), None)
    if row is not None:
        verdict = row.row.verdict
        out.append(f"Against today's settings: {row.what} {row.row.before} → {row.row.after}, "
                   f"{row.row.change_text} (**{verdict}**)." if verdict != "no detectable change at this n" else
                   f"Against today's settings no setting is shown better: {row.what} {row.row.before} → "
                   f"{row.row.after}, {row.row.change_text}, not beyond the smallest change a run can show.")
    return out


def _pair_rows(res: TuningResult):
    from perfkit.analysis import verdicts

    out = []
    for p in res.figures.pairs:
        fa, fb = res.figures[p.before], res.figures[p.after]
        runs = len(fa.replicates) >= verdicts.MIN_REPLICATES and len(fb.replicates) >= verdicts.MIN_REPLICATES
        out.append(_Row(p.row, verdicts.compare_figure_pair(fa, fb, runs_mode=runs, min_effect=verdicts.MIN_EFFECT)))
    return out


@dataclass
class _Row:
    what: str
    row: Any


def before_after(res: TuningResult) -> pd.DataFrame:
    """The guides' before/after table: today's settings against the tuned ones, each restarted in turn."""
    rows = [{"": r.what, "before (today)": r.row.before, "after (tuned)": r.row.after,
             "after / before": r.row.ratio_text, "verdict": r.row.verdict, "why": r.row.reason}
            for r in _pair_rows(res)]
    return pd.DataFrame(rows).set_index("") if rows else pd.DataFrame()


def trace(res: TuningResult) -> pd.DataFrame:
    """Every candidate in the order measured: its figures and what became of it."""
    t = res.candidates
    if t.empty:
        return t
    return t.drop(columns=["value"]).set_index("setting")


def pareto_charts(res: TuningResult) -> list:
    """Each measured candidate as a point: its TTFT, and its peak server memory, against the request rate its clients
    sustained (down and to the right is better): the trade-offs the winner sits among."""
    from perfkit.report.charts import Chart, Series

    df = res.trials
    if df.empty or "candidate" not in df:
        return []
    search = measured(df[df["series"].astype(str).str.startswith("cand/")])
    pts = []
    for key, g in search.groupby("candidate", sort=False):
        rate = float(pd.Series(served(g)).median())
        pts.append((key, rate, float(pd.to_numeric(g["ttft_s"]).median()), peak_rss(g), len(g)))
    if not pts:
        return []
    lat = [Series(k, [r], [SECONDS.plot(t)], text=[f"{REQUESTS_PER_S.text(r)}, TTFT {SECONDS.text(t)} (n={n})"])
           for k, r, t, _, n in pts]
    mem = [Series(k, [r], [BYTES.plot(m)], text=[f"{REQUESTS_PER_S.text(r)}, peak RSS {BYTES.text(m)}"])
           for k, r, _, m, _ in pts]
    rate = REQUESTS_PER_S.axis_label("request rate, median")
    return [Chart("scatter", "Each candidate: time to first token against the request rate",
                  SECONDS.axis_label("median TTFT"),
                  "One point per candidate setting: its median TTFT against the request rate its clients sustained; "
                  "down and to the right is better", lat, xlabel=rate, legend_title="setting"),
            Chart("scatter", "Each candidate: peak server memory against the request rate",
                  BYTES.axis_label("peak RSS"),
                  "One point per candidate setting: its server's peak resident memory against the request rate its "
                  "clients sustained", mem, xlabel=rate, legend_title="setting")]


def res_concurrency(res: TuningResult) -> int:
    p = ((res.manifest.get("params") or {}).get("studies") or {}).get("tuning") or {}
    return int(p.get("concurrency") or 1)


def conclusions(res: TuningResult) -> str:
    lines = [answer_block(answer(res), res.failures) + "### What the measurements say"]
    w = noisy_note(res.trials)
    if w:
        lines.append("- " + w)
    t = res.candidates
    if len(t):
        n_merged = int(t["status"].str.startswith("merged").sum())
        n_dropped = int(t["status"].str.startswith("dropped").sum() + t["status"].str.startswith("beaten").sum())
        n_out = int(t["status"].str.startswith(("not eligible", "the server could not")).sum())
        space_size = math.prod(len(v) for v in res.space.values()) if res.space else 0
        dims = "; ".join(k + " ∈ {" + ", ".join(map(str, v)) + "}" for k, v in res.space.items())
        lines.append(f"- Searched {len(t)} of the {space_size} combinations of {dims}: "
                     f"{n_dropped} beaten or dropped, {n_merged} merged (the server ran them as another), "
                     f"{n_out} not eligible (the SLOs, the memory limit, or a server that could not run them).")
    if res.claim is not None:
        lines.append(f"- {res.claim.sentence(OBJECTIVES[res.objective][1])}")
        said = res.looks.sentence(_looks_taken(res), res.stopped or LAST_LOOK, what="series of each candidate left")
        if said:
            lines.append("  " + said)
    top, above, tried = res.capacity
    if res.winner and tried:
        c = res_concurrency(res)
        v = res.rate_verdicts
        said = {x: ", ".join(f"{fmt.number(r)}" for r, y in sorted(v.items()) if y == x) for x in set(v.values())}
        what = (f"sustains {fmt.number(top)} req/s inside the SLOs and not {fmt.number(above)}: its capacity lies "
                "between" if math.isfinite(top) and math.isfinite(above) else
                f"sustains at least {fmt.number(top)} req/s inside the SLOs" if math.isfinite(top) else
                "was not shown to sustain any rate tried")
        parts = [f"{k} at {r} req/s" for k, r in ((SUSTAINED, said.get(SUSTAINED)),
                                                  (NOT_SUSTAINED, said.get(NOT_SUSTAINED)),
                                                  ("can't tell (too few requests for the latency trend)",
                                                   said.get(CANT_TELL))) if r]
        lines.append(f"- Capacity: with the tuned settings the server {what} (open loop: requests on a schedule, "
                     f"latency timed from it, around what its {c} clients drove: {'; '.join(parts)}).")
    if res.cost:
        lines.append("- Cost at the stated clients' throughput: " + "; ".join(
            f"{'tuned' if k == 'after' else 'today'} ${v:.2f} per million output tokens" for k, v in res.cost.items())
                     + " (from the GPU-hour price in the parameters).")
    cold = res.cold
    if cold and cold.get("cold_e2e") is not None:
        f = cold["cold_e2e"]
        lines.append(f"- Warmup: with the tuned settings the first request after a restart takes {f.text()} against "
                     f"{fmt.duration(cold['warm_e2e_s'])} for a warm one at the stated clients (loading the model: "
                     f"{fmt.duration(cold['load_s'])}); keeping it loaded costs {BYTES.text(cold['rss_bytes'])} of server "
                     "memory. Preload it at start "
                     f"and set {SV.name_of(SV.KEEP_ALIVE)} long enough to span your idle gaps (or -1) if that memory is free. "
                     f"A proxy in front needs `proxy_read_timeout` ≥ {cold['proxy_read_timeout_s']} s (three times "
                     f"the slowest cold start measured, {fmt.duration(cold['worst_cold_s'])}).")
    if res.files:
        lines.append("- To deploy: " + ", ".join(f"[{n}]({p})" for n, p in res.files.items()) + " (each says which run "
                     "found it).")
    lines.append("")
    lines.append(method_note(res.manifest))
    return "\n".join(lines)


def _looks_taken(res: TuningResult) -> list[int]:
    t = res.candidates
    return list(range(1, int(t["looks"].max()) + 1)) if len(t) and t["looks"].max() else []

