"""Quantization: speed, memory and size per quantization variant of one model, and how far each variant's
greedy output drifts from the highest-precision one on the same prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from perfkit.analysis import figures as F
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.sequential import Looks
from perfkit.analysis.models import model_figures, offload_warnings, per_model, speed_claim, speed_settled
from perfkit.analysis.requests import est, failures, measured, method_note, negative_overhead_note, noisy_note, state_note
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.schema import MAX_PROMPT_WORDS, MAX_REPS, MAX_TOKENS, unique
from perfkit.measure.devices import record_devices
from perfkit.measure.runner import Trial, plan as plan_trials
from perfkit.report.answer import answer_block
from perfkit.measure.sequential import Budget, looks_taken, measure_in_looks
from perfkit.studies.base import Study, StudyContext, StudyResult, UntilAnswered
from perfkit.studies.registry import register


class QuantizationParams(UntilAnswered):
    """``studies.quantization``: variants of one model, the reference, repetitions and drift prompts."""

    models: list[str] = Field(min_length=2)
    reference: str | None = Field(None, description="highest-precision variant; default: the first")
    reps: int = Field(4, ge=1, le=MAX_REPS)
    drift_prompts: int = Field(4, ge=1, le=MAX_REPS)
    num_predict: int = Field(48, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(64, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("models")
    @classmethod
    def _models(cls, v):
        return unique(v, "model")

    @model_validator(mode="after")
    def _ref(self):
        if self.reference is not None and self.reference not in self.models:
            raise ValueError(f"reference {self.reference!r} must be one of models: {', '.join(self.models)}")
        return self




@dataclass
class QuantizationResult(StudyResult):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)
    drift_method: str = "tokens"
    reference: str = ""
    looks: Looks = field(default_factory=lambda: Looks(1))
    looks_taken: tuple[list[int], str] | None = None


@register
class Quantization(Study):
    name = "quantization"
    title = "Quantization: speed, memory, size and output drift per variant"
    question = "Which quantization should we run: how much faster and smaller, and how far do outputs drift?"
    Params = QuantizationParams
    order = 30

    def measure(self, ctx: StudyContext) -> None:
        c, budget = ctx.cfg, Budget(ctx.cfg.budget_s)
        with ctx.session() as s:
            looks = c.looks()
            measure_in_looks(ctx.store, SPEED, looks,
                             lambda n: s.runner.run(warm_plan(ctx, n), desc=f"quantization, look {looks.ns.index(n) + 1} "
                                                                           f"of {looks.k}"),
                             lambda: speed_settled("quantization", ctx.store.trials(), ctx.store.events(), c.models,
                                                   _workload(c), looks.confidence), budget)
            s.runner.run(plan(ctx), desc="quantization: cold loads and output drift")
            record_devices(s, ctx.store, ctx.cfg.models)

    def analyze(self, ctx: StudyContext) -> QuantizationResult:
        return analyze(ctx)

    def conclusions(self, result: QuantizationResult) -> str:
        return conclusions(result)


def reference(ctx: StudyContext) -> str:
    return ctx.cfg.reference or ctx.cfg.models[0]


SPEED = "decode speed"  # the comparison measured until answered


def _workload(c) -> dict:
    return {"prompt_words": c.prompt_words, "num_predict": c.num_predict}


def warm_plan(ctx: StudyContext, reps: int) -> list[Trial]:
    """The warm requests of every variant, ``reps`` interleaved rounds (the first rounds of a longer plan are the
    same trials, so a later look only adds rounds)."""
    c = ctx.cfg
    return plan_trials(c.models, reps, prefix="warm", warmup=1, cache_state="warm", seed=ctx.params.seed,
                       prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))


def plan(ctx: StudyContext) -> list[Trial]:
    """The cold loads and the drift prompts (after the warm requests of :func:`warm_plan`)."""
    c = ctx.cfg
    kw = dict(prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))
    trials = plan_trials(c.models, max(1, c.reps // 2), prefix="cold", warmup=0, cache_state="cold_memory",
                          seed=ctx.params.seed + 1, **kw)
    trials += [Trial(f"drift/{m}/p{k}", m, "warm", k, False, m, c.prompt_words,
                     Sampling.greedy(c.num_predict, seed=ctx.params.seed), logprobs=True, prompt_key=f"drift/p{k}",
                     tags={"drift": True})
               for k in range(c.drift_prompts) for m in c.models]
    return trials


def agreement(ref_tokens: list[str], tokens: list[str], ref_lp: list[float] | None, lp: list[float] | None) -> dict:
    """Greedy outputs of one prompt: positionwise token agreement over the reference length, the
    share of the reference reproduced before the first difference, and the mean |Δ logprob| over
    that common prefix (same context, so the numbers are comparable)."""
    n = len(ref_tokens)
    if n == 0:
        return {"token_agreement": np.nan, "prefix_match": np.nan, "logprob_abs_diff": np.nan}
    same = sum(1 for a, b in zip(ref_tokens, tokens) if a == b)
    prefix = 0
    for a, b in zip(ref_tokens, tokens):
        if a != b:
            break
        prefix += 1
    diff = np.nan
    if ref_lp and lp and prefix:
        d = [abs(a - b) for a, b in zip(ref_lp[:prefix], lp[:prefix]) if a is not None and b is not None]
        diff = float(np.mean(d)) if d else np.nan
    return {"token_agreement": same / n, "prefix_match": prefix / n, "logprob_abs_diff": diff}


def drift(df: pd.DataFrame, ref: str) -> pd.DataFrame:
    d = measured(df)
    if d.empty or "drift" not in d:
        return pd.DataFrame()
    d = d[d["drift"].astype("boolean").fillna(False).astype(bool)]
    rows = []
    for key, g in d.groupby("rep"):
        r = g[g["variant"] == ref]
        if r.empty:
            continue
        r = r.iloc[0]
        for _, x in g.iterrows():
            (a, method), (b, method_b) = units(r), units(x)
            if method != method_b:  # compare like with like
                a, b, method = str(r.get("text") or "").split(), str(x.get("text") or "").split(), "words"
            rows.append({"prompt": key, "variant": x["variant"], "method": method,
                         **agreement(a, b, r.get("logprobs") if method == "tokens" else None,
                                   x.get("logprobs") if method == "tokens" else None)})
    return pd.DataFrame(rows)


def units(row) -> tuple[list[str], str]:
    """What to compare greedy outputs by: the model's own tokens when the server returned them
    (logprobs), else words of the output text (an Ollama older than the logprobs field)."""
    tokens = row.get("tokens")
    if isinstance(tokens, (list, tuple, np.ndarray)) and len(tokens):
        return list(tokens), "tokens"
    return str(row.get("text") or "").split(), "words"


def analyze(ctx: StudyContext) -> QuantizationResult:
    c = ctx.cfg
    df = ctx.store.trials()
    speed = df[~df["trial_id"].str.startswith("drift/")] if len(df) else df
    table = per_model(ctx.store, speed, c.models)
    ref = reference(ctx)
    dr = drift(df, ref)
    wl = {"prompt_words": c.prompt_words, "num_predict": c.num_predict}
    figs = FigureSet(model_figures("quantization", speed, ctx.store.events(), c.models, wl))
    if not dr.empty:
        for col, tag in (("token_agreement", "agreement"), ("prefix_match", "prefix_match")):
            for v, g in dr.groupby("variant"):
                if v == ref:
                    continue
                e = est(g[col], "mean")
                # Shares can't leave [0, 1]: a t-interval from a few prompts can, so it is cut at the bounds.
                e = type(e)(e.stat, e.value, max(0.0, e.lo), min(1.0, e.hi), e.n, e.confidence, e.method,
                            e.need_n, e.note)
                figs.add(F.from_estimate("quantization", tag, e, where={"model": v, "reference": ref}, model=v,
                                         workload={**wl, "drift_prompts": c.drift_prompts}))
        for col in ("token_agreement", "prefix_match", "logprob_abs_diff"):
            agg = {v: est(g[col], "mean") for v, g in dr.groupby("variant")}
            table[col] = table["model"].map(lambda m: agg[m].value if m in agg else np.nan)
            lo_b, hi_b = (0.0, 1.0) if col != "logprob_abs_diff" else (0.0, np.inf)
            table[f"{col}_lo"] = table["model"].map(lambda m: max(lo_b, agg[m].lo) if m in agg else np.nan)
            table[f"{col}_hi"] = table["model"].map(lambda m: min(hi_b, agg[m].hi) if m in agg else np.nan)
    method = ("tokens" if dr.empty or (dr["method"] == "tokens").all() else
              "words" if (dr["method"] == "words").all() else "mixed")
    return QuantizationResult("quantization", figs, df, ctx.store.manifest(), failures(df), table=table, drift=dr,
                              drift_method=method, reference=ref, looks=c.looks(),
                              looks_taken=looks_taken(ctx.store.events(), SPEED))


def drift_table(res: QuantizationResult) -> pd.DataFrame:
    """Per variant: agreement with the reference and the share reproduced before the first difference (each
    the study's figure, with its CI and n = prompts), and the mean |Δ logprob| on the shared prefix."""
    t = res.table
    if t.empty or "token_agreement" not in t:
        return pd.DataFrame()
    rows = []
    for _, r in t.iterrows():
        if r["model"] == res.reference:
            continue
        a = res.figures.get(f"quantization/agreement/{r['model']}/{res.reference}")
        p = res.figures.get(f"quantization/prefix_match/{r['model']}/{res.reference}")
        rows.append({"variant": r["model"], "quantization": r["quantization"],
                     "agreement with the reference": a.text() if a else fmt.NA,
                     "reproduced before the first difference": p.text() if p else fmt.NA,
                     "mean |Δ logprob|": fmt.number(r.get("logprob_abs_diff"))})
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()


def _ci(lo: float, hi: float) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) or lo == hi else f" [{fmt.number(lo)}, {fmt.number(hi)}]"


def answer(res: QuantizationResult) -> list[str]:
    """Which quantization to run: speed (a tested claim), size and how far outputs drift (at most three sentences)."""
    t = res.table.set_index("model") if len(res.table) else res.table
    models = list(t.index)
    claim = speed_claim("quantization", res.figures, models, res.looks.confidence)
    if claim is None:
        return []
    ref, out = res.reference, []
    fast = res.figures[f"quantization/decode_rate/{claim.best}"]
    if claim.called:
        vs = claim.rows.get(ref)
        out.append(f"**{claim.best}** decodes fastest: {fast.link()}"
                   + (f", {vs.change_text} against the reference **{ref}**." if vs is not None else "."))
    elif claim.settled:
        out.append(f"**{claim.best}** ({fast.link()}) and **{'**, **'.join(claim.not_separated)}** decode equally fast "
                   f"within ±{claim.min_effect:.0%}" + (f"; the reference **{ref}** is slower ({claim.rows[ref].change_text})"
                                                        if ref in claim.rows and ref not in claim.not_separated
                                                        else "") + ".")
    else:
        why = ("before the time budget was spent" if res.looks_taken and res.looks_taken[1] == "budget"
               else "at this n")
        out.append(f"The quantizations' decode speeds are not separable {why}: the fastest by its median, "
                   f"**{claim.best}** ({fast.link()}), is not separated from {', '.join(claim.not_separated)}.")
    pick = claim.best if claim.best != ref else None
    agree = res.figures.get(f"quantization/agreement/{pick}/{ref}") if pick else None
    mem = res.figures.get(f"quantization/memory/{claim.best}")
    size = t.loc[claim.best, "file_bytes"] if "file_bytes" in t and claim.best in t.index else math.nan
    bits = []
    if pd.notna(size):
        bits.append(f"its file is {fmt.size(size)}")
    if mem is not None:
        bits.append(f"{mem.link()} resident")
    if agree is not None:
        bits.append(f"it reproduces {agree.link()} of the reference's greedy tokens")
    if bits:
        out.append(f"For **{claim.best}**, " + ", ".join(bits) + ".")
    return out


def conclusions(res: QuantizationResult) -> str:
    t = res.table.set_index("model")
    ref = res.reference

    def quant(m: str) -> str:
        q = t.loc[m, "quantization"] if m in t.index else None
        return q if isinstance(q, str) else "quantization unknown"

    lines = [answer_block(answer(res), res.failures) + f"### What the measurements say (reference: {ref}, {quant(ref)})"]
    lines = offload_warnings(res.table) + lines
    for w in (noisy_note(res.trials), negative_overhead_note(res.trials)):
        if w:
            lines.append("- " + w)
    if t["decode_tok_s"].isna().all() or ref not in t.index:
        return "\n".join(lines + ["- No successful warm trials: nothing to conclude about speed.", res.failures])
    smallest = t["file_bytes"].idxmin() if t["file_bytes"].notna().any() else None
    claim = speed_claim("quantization", res.figures, list(t.index), res.looks.confidence)
    if claim is not None:
        f_fast = res.figures.get(f"quantization/decode_rate/{claim.best}")
        line = f"- Decode speed: {claim.sentence('decode speed')} Its median: {f_fast.text()}"
        if claim.best != ref and ref in claim.rows:
            line += f"; against the reference **{ref}**: {claim.rows[ref].ratio_text}, {claim.rows[ref].verdict}"
        lines.append(line + ".")
        if res.looks_taken and res.looks.sentence(*res.looks_taken, what="requests of each variant"):
            lines.append("  " + res.looks.sentence(*res.looks_taken, what="requests of each variant"))
    if smallest:
        share = (f", {t.loc[smallest, 'file_bytes'] / t.loc[ref, 'file_bytes']:.0%} of the reference's size"
                 if pd.notna(t.loc[ref, "file_bytes"]) and t.loc[ref, "file_bytes"] else
                 " (the reference's size is unknown)")
        lines.append(f"- Smallest file: **{smallest}** at {fmt.size(t.loc[smallest, 'file_bytes'])}{share}.")
    if "token_agreement" in t:
        for m in t.index:
            if m == ref or pd.isna(t.loc[m, "token_agreement"]):
                continue
            unit = "tokens" if res.drift_method == "tokens" else "words (the server returned no tokens)"
            agree = res.figures.get(f"quantization/agreement/{m}/{ref}")
            prefix = res.figures.get(f"quantization/prefix_match/{m}/{ref}")
            if agree is None:
                continue
            lines.append(f"- **{m}** agrees with the reference on {agree.text()} of greedy {unit}"
                         + (f" and reproduces {prefix.text()} of its output before the first difference"
                            if prefix is not None else "")
                         + (f"; mean |Δ logprob| on the shared prefix {t.loc[m, 'logprob_abs_diff']:.3f}."
                            if pd.notna(t.loc[m, "logprob_abs_diff"]) else "."))
    derived = {m: (f or {}).get("extra", {}).get("requantized_from") for m, f in (res.manifest.get("models") or {}).items()
               if isinstance(f, dict)}
    derived = {m: src for m, src in derived.items() if src}
    if derived:
        src = sorted(set(derived.values()))
        lines.append(f"- {', '.join(sorted(derived))} {'are' if len(derived) > 1 else 'is'} re-quantized from "
                     f"{', '.join(src)}: their speed and memory differ for real, but none can be more accurate "
                     "than that source.")
    for note in (state_note(res.trials), res.failures):
        if note:
            lines.append("- " + note)
    lines += ["", method_note(res.manifest, f"Drift: greedy decoding (temperature 0, top_k 1), compared by "
                                               f"{res.drift_method}; mean agreement with a t-interval over prompts, "
                                               "n = prompts per variant.")]
    return "\n".join(lines)
