"""Model size: what does a bigger model cost? Load time, TTFT, prefill and decode speed, memory, energy per
token (with a GPU), and decode speed as a share of the memory-bandwidth limit."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from perfkit.analysis import stats
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.sequential import Looks
from perfkit.analysis.models import model_figures, offload_warnings, per_model, speed_claim, speed_settled
from perfkit.analysis.requests import (failures, measured, method_note, negative_overhead_note,
                                       noisy_note, state_note)
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.units import BYTES, RATIO, TOKENS_PER_S
from perfkit.core.schema import MAX_PROMPT_WORDS, MAX_REPS, MAX_TOKENS, unique
from perfkit.measure.devices import record_devices
from perfkit.measure.runner import plan as plan_trials
from perfkit.report.answer import answer_block
from perfkit.measure.sequential import Budget, looks_taken, measure_in_looks
from perfkit.studies.base import Study, StudyContext, StudyResult, UntilAnswered
from perfkit.studies.registry import register


class ModelSizeParams(UntilAnswered):
    """``studies.model_size``: two or more models, warm and cold repetitions."""

    models: list[str] = Field(min_length=2)
    reps: int = Field(5, ge=1, le=MAX_REPS)
    cold_reps: int = Field(3, ge=1, le=MAX_REPS)
    num_predict: int = Field(64, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(96, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("models")
    @classmethod
    def _models(cls, v):
        return unique(v, "model")




@dataclass
class ModelSizeResult(StudyResult):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    looks: Looks = field(default_factory=lambda: Looks(1))
    looks_taken: tuple[list[int], str] | None = None


SPEED = "decode speed"  # the comparison measured until answered


def _workload(c) -> dict:
    return {"prompt_words": c.prompt_words, "num_predict": c.num_predict}


def warm_plan(ctx: StudyContext, reps: int):
    """Every model's warm requests, ``reps`` interleaved rounds (a later look only adds rounds)."""
    c = ctx.cfg
    return plan_trials(c.models, reps, prefix="warm", warmup=1, cache_state="warm", seed=ctx.params.seed,
                       prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))


def plan(ctx: StudyContext):
    """The cold loads (after the warm requests of :func:`warm_plan`)."""
    c = ctx.cfg
    return plan_trials(c.models, c.cold_reps, prefix="cold", warmup=0, cache_state="cold_memory",
                       seed=ctx.params.seed + 1, prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))


@register
class ModelSize(Study):
    name = "model_size"
    title = "Model size: what a bigger model costs"
    question = "What does a bigger model cost in load time, latency, speed, memory and energy?"
    Params = ModelSizeParams
    order = 20

    def measure(self, ctx: StudyContext) -> None:
        c, budget = ctx.cfg, Budget(ctx.cfg.budget_s)
        with ctx.session() as s:
            looks = c.looks()
            measure_in_looks(ctx.store, SPEED, looks,
                             lambda n: s.runner.run(warm_plan(ctx, n), desc=f"model size, look {looks.ns.index(n) + 1} "
                                                                           f"of {looks.k}"),
                             lambda: speed_settled("model_size", ctx.store.trials(), ctx.store.events(), c.models,
                                                   _workload(c), looks.confidence), budget)
            s.runner.run(plan(ctx), desc="model size: cold loads")
            record_devices(s, ctx.store, ctx.cfg.models)

    def analyze(self, ctx: StudyContext) -> ModelSizeResult:
        c = ctx.cfg
        df = ctx.store.trials()
        figs = FigureSet(model_figures("model_size", df, ctx.store.events(), c.models,
                                       {"prompt_words": c.prompt_words, "num_predict": c.num_predict}))
        return ModelSizeResult("model_size", figs, df, ctx.store.manifest(), failures(df),
                               table=per_model(ctx.store, df, c.models), looks=c.looks(),
                               looks_taken=looks_taken(ctx.store.events(), SPEED))

    def conclusions(self, result: ModelSizeResult) -> str:
        return conclusions(result)


def _fig(res: StudyResult, tag: str, model: str) -> str:
    f = res.figures.get(f"{res.study}/{tag}/{model}")
    return f.text() if f is not None else fmt.NA


def _ratio_line(a: stats.Estimate, what: str) -> str | None:
    """A ratio as a claim its CI carries; None when there is no ratio to state."""
    if not np.isfinite(a.value):
        return None
    if not a.has_ci:
        return f"{RATIO.estimate(a)} {what} (no CI at this n, so no claim either way)"
    if a.lo <= 1 <= a.hi:
        return f"{RATIO.estimate(a)} {what}, which this n does not distinguish from equal"
    return f"{RATIO.estimate(a)} {what}"


def answer(res: ModelSizeResult) -> list[str]:
    """What the bigger model costs: decode speed (a tested claim), load and memory (at most three sentences)."""
    t = res.table.set_index("model") if len(res.table) else res.table
    if t.empty:
        return []
    by_size = t.sort_values("file_bytes") if t["file_bytes"].notna().all() else t
    small, large = by_size.index[0], by_size.index[-1]
    get = lambda tag, m: res.figures.get(f"model_size/{tag}/{m}")  # noqa: E731
    out = []
    claim = speed_claim("model_size", res.figures, list(t.index), res.looks.confidence)
    fs, fl = get("decode_rate", small), get("decode_rate", large)
    if claim is not None and fs is not None and fl is not None and small != large:
        row = claim.rows.get(small if claim.best == large else large)
        change = f" ({row.change_text})" if row is not None and claim.called else ""
        if claim.called:
            out.append(f"**{claim.best}** decodes faster: {get('decode_rate', claim.best).link()} against "
                       f"{get('decode_rate', small if claim.best == large else large).link()}{change}.")
        elif claim.settled:
            out.append(f"The models decode equally fast within ±{claim.min_effect:.0%} ({fl.link()} for **{large}**, "
                       f"{fs.link()} for **{small}**).")
        else:
            out.append(f"At this n the two models' decode speeds are not separable ({fl.link()} for **{large}**, "
                       f"{fs.link()} for **{small}**).")
    ls, ll = get("load", small), get("load", large)
    ms, ml = get("memory", small), get("memory", large)
    bits = []
    if ll is not None and ls is not None:
        bits.append(f"loads in {ll.link()} (against {ls.link()})")
    if ml is not None and ms is not None:
        bits.append(f"needs {ml.link()} resident (against {ms.link()})")
    if bits and small != large:
        out.append(f"The larger **{large}** " + " and ".join(bits) + ".")
    return out


def conclusions(res: ModelSizeResult) -> str:
    t = res.table.set_index("model")
    ok = measured(res.trials)
    lines = offload_warnings(res.table) + [answer_block(answer(res), res.failures) + "### What the measurements say"]
    for w in (noisy_note(res.trials), negative_overhead_note(res.trials)):
        if w:
            lines.append("- " + w)
    if t.empty or ok.empty:
        return "\n".join(lines + ["- No successful trials: nothing to conclude.", res.failures])
    by_size = t.sort_values("file_bytes") if t["file_bytes"].notna().all() else t
    small, large = by_size.index[0], by_size.index[-1]
    for m in (small, large):
        r = t.loc[m]
        if pd.notna(r.get("decode_pct_of_limit", np.nan)):
            lim = (f", {r['decode_pct_of_limit']:.0f}% of the {TOKENS_PER_S.text(r['decode_limit_tok_s'])} limit its device's "
                   f"memory bandwidth allows ({r['bandwidth_source']})")
        else:
            lim = f"; its bandwidth limit is unknown, because {r.get('limit_unknown_because')}"
        size = fmt.size(r["file_bytes"]) if pd.notna(r["file_bytes"]) else "size unknown"
        if pd.notna(r.get("model_memory_bytes", np.nan)):
            size += f", {BYTES.text(r['model_memory_bytes'])} resident"
        quant = r["quantization"] if isinstance(r["quantization"], str) else "quantization unknown"
        lines.append(f"- **{m}** ({quant}, {fmt.count(r['parameters'])} parameters, {size}): loads in "
                     f"{_fig(res, 'load', m)}, warm TTFT {_fig(res, 'ttft', m)}, decodes at "
                     f"{_fig(res, 'decode_rate', m)}{lim}.")
    warm = lambda m: ok[(ok["variant"] == m) & (ok["cache_state"] == "warm")]  # noqa: E731
    cold = lambda m: ok[(ok["variant"] == m) & (ok["cache_state"] != "warm")]  # noqa: E731
    if small != large and warm(small)["decode_tok_s"].notna().any() and warm(large)["decode_tok_s"].notna().any():
        rd = _ratio_line(stats.ratio(warm(small)["decode_tok_s"], warm(large)["decode_tok_s"]), "as fast")
        rl = _ratio_line(stats.ratio(cold(large)["load_s"], cold(small)["load_s"]), "as long to load")
        parts = ([f"the smaller model decodes {rd}"] if rd else []) + ([f"the larger one takes {rl}"] if rl else [])
        if parts:
            lines.append("- " + "; ".join(parts)[0].upper() + "; ".join(parts)[1:] + ".")
    said = res.looks.sentence(*res.looks_taken, what="warm requests of each model") if res.looks_taken else ""
    if said:
        lines.append("- " + said)
    energy = [f for f in res.figures.values() if f.metric == "energy_per_token"]
    if energy:
        lines.append("- Energy per output token (GPUs holding the server's processes): "
                     + ", ".join(f"{f.model} {f.text()}" for f in energy) + ".")
    else:
        why = res.trials["res_energy_unknown_because"].dropna() if "res_energy_unknown_because" in res.trials else []
        if len(why):
            lines.append(f"- No energy per token in this run: {why.value_counts().index[0]}.")
        else:
            lines.append("- No GPU holding the server's processes was sampled, so there is no energy per token in "
                         "this run.")
    for note in (state_note(res.trials), res.failures):
        if note:
            lines.append("- " + note)
    lines += ["", method_note(res.manifest)]
    return "\n".join(lines)
