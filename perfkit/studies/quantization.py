"""Study 3: quantization variants of one model: speed, memory, file size, and how far each
variant's greedy output drifts from the highest-precision one on the same prompts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perfkit.client.backends.base import Sampling
from perfkit.measure.runner import Trial, plan as plan_trials
from perfkit.core import fmt
from perfkit.analysis.requests import est, failures, measured, method_note, negative_overhead_note, noisy_note, state_note
from perfkit.studies.base import StudyContext
from perfkit.studies.model_size import measure, offload_warnings, per_model


def reference(ctx: StudyContext) -> str:
    return ctx.cfg.reference or ctx.cfg.models[0]


def plan(ctx: StudyContext) -> list[Trial]:
    c = ctx.cfg
    kw = dict(prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))
    trials = plan_trials(c.models, c.reps, prefix="warm", warmup=1, cache_state="warm", seed=ctx.params.seed, **kw)
    trials += plan_trials(c.models, max(1, c.reps // 2), prefix="cold", warmup=0, cache_state="cold_memory",
                          seed=ctx.params.seed + 1, **kw)
    trials += [Trial(f"drift/{m}/p{k}", m, "warm", k, False, m, c.prompt_words,
                     Sampling.greedy(c.num_predict, seed=ctx.params.seed), logprobs=True, prompt_key=f"drift/p{k}",
                     tags={"drift": True})
               for k in range(c.drift_prompts) for m in c.models]
    return trials


def run(ctx: StudyContext) -> dict[str, Any]:
    measure(ctx, plan(ctx), "quantization")
    return analyze(ctx)


def compare(ref_tokens: list[str], tokens: list[str], ref_lp: list[float] | None, lp: list[float] | None) -> dict:
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
    d = d[d["drift"].fillna(False).astype(bool)]
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
                         **compare(a, b, r.get("logprobs") if method == "tokens" else None,
                                   x.get("logprobs") if method == "tokens" else None)})
    return pd.DataFrame(rows)


def units(row) -> tuple[list[str], str]:
    """What to compare greedy outputs by: the model's own tokens when the server returned them
    (logprobs), else words of the output text (an Ollama older than the logprobs field)."""
    tokens = row.get("tokens")
    if isinstance(tokens, (list, tuple, np.ndarray)) and len(tokens):
        return list(tokens), "tokens"
    return str(row.get("text") or "").split(), "words"


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    speed = df[~df["trial_id"].str.startswith("drift/")] if len(df) else df
    table = per_model(ctx, speed, ctx.cfg.models)
    dr = drift(df, reference(ctx))
    if not dr.empty:
        for col in ("token_agreement", "prefix_match", "logprob_abs_diff"):
            agg = {v: est(g[col], "mean") for v, g in dr.groupby("variant")}
            table[col] = table["model"].map(lambda m: agg[m].value if m in agg else np.nan)
            # Shares can't leave [0, 1]: a t-interval from a few prompts can, so it is cut at the bounds.
            lo_b, hi_b = (0.0, 1.0) if col != "logprob_abs_diff" else (0.0, np.inf)
            table[f"{col}_lo"] = table["model"].map(lambda m: max(lo_b, agg[m].lo) if m in agg else np.nan)
            table[f"{col}_hi"] = table["model"].map(lambda m: min(hi_b, agg[m].hi) if m in agg else np.nan)
    method = ("tokens" if dr.empty or (dr["method"] == "tokens").all() else
              "words" if (dr["method"] == "words").all() else "mixed")
    return {"trials": df, "table": table, "drift": dr, "drift_method": method, "reference": reference(ctx),
            "manifest": ctx.store.manifest(), "failures": failures(df)}


def _ci(lo: float, hi: float) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) or lo == hi else f" [{fmt.number(lo)}, {fmt.number(hi)}]"


def conclusions(res: dict[str, Any]) -> str:
    t = res["table"].set_index("model")
    ref = res["reference"]
    lines = [f"### What the measurements say (reference: {ref}, {t.loc[ref, 'quantization']})"]
    lines = offload_warnings(res["table"]) + lines
    for w in (noisy_note(res["trials"]), negative_overhead_note(res["trials"])):
        if w:
            lines.append("- " + w)
    fastest = t["decode_tok_s"].idxmax()
    smallest = t["file_bytes"].idxmin() if t["file_bytes"].notna().any() else None
    lines.append(f"- Fastest decode: **{fastest}** ({t.loc[fastest, 'quantization']}) at "
                 f"{fmt.rate(t.loc[fastest, 'decode_tok_s'])}{_ci(t.loc[fastest, 'decode_tok_s_lo'], t.loc[fastest, 'decode_tok_s_hi'])}"
                 f" vs {fmt.rate(t.loc[ref, 'decode_tok_s'])} for the reference (medians over warm requests).")
    if smallest:
        lines.append(f"- Smallest file: **{smallest}** at {fmt.size(t.loc[smallest, 'file_bytes'])}, "
                     f"{t.loc[smallest, 'file_bytes'] / t.loc[ref, 'file_bytes']:.0%} of the reference's size.")
    if "token_agreement" in t:
        for m in t.index:
            if m == ref or pd.isna(t.loc[m, "token_agreement"]):
                continue
            unit = "tokens" if res["drift_method"] == "tokens" else "words (the server returned no tokens)"
            lines.append(f"- **{m}** agrees with the reference on {t.loc[m, 'token_agreement']:.0%} of greedy {unit} "
                         f"[{t.loc[m, 'token_agreement_lo']:.0%}, {t.loc[m, 'token_agreement_hi']:.0%}] and reproduces "
                         f"{t.loc[m, 'prefix_match']:.0%} of its output before the first difference"
                         + (f"; mean |Δ logprob| on the shared prefix {t.loc[m, 'logprob_abs_diff']:.3f}."
                            if pd.notna(t.loc[m, "logprob_abs_diff"]) else "."))
    if res["manifest"].get("backend", {}).get("backend") == "llama-server":
        lines.append("- The embedded variants are re-quantized from a Q4_1 file: their speed and memory differ for "
                     "real, but none can be more accurate than that Q4_1 source.")
    for note in (state_note(res["trials"]), res["failures"]):
        if note:
            lines.append("- " + note)
    lines += ["", method_note(res["manifest"], f"Drift: greedy decoding (temperature 0, top_k 1), compared by "
                                               f"{res['drift_method']}; mean agreement with a t-interval over prompts, "
                                               "n = prompts per variant.")]
    return "\n".join(lines)
