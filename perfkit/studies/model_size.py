"""Study 2: small vs large model: load time, TTFT, prefill and decode speed, memory, energy per
token (with a GPU), and decode speed as a share of the memory-bandwidth limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import host
from ..backends.base import Sampling
from ..runner import plan as plan_trials
from ._common import est, failures, fmt_s, measured, method_note
from ._context import StudyContext


def plan(ctx: StudyContext):
    c = ctx.cfg
    kw = dict(prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))
    return (plan_trials(c.models, c.reps, prefix="warm", warmup=1, cache_state="warm", seed=ctx.params.seed, **kw)
            + plan_trials(c.models, c.cold_reps, prefix="cold", warmup=0, cache_state="cold_memory",
                          seed=ctx.params.seed + 1, **kw))


def bandwidth_limit(ctx: StudyContext, monitor_has_gpu: bool) -> None:
    """Record the memory bandwidth decode is bounded by: the GPU's datasheet figure, or measured host memory."""
    ev = ctx.store.events()
    if len(ev) and (ev["kind"] == "memory_bandwidth").any():
        return
    gpus = host.gpus() if monitor_has_gpu else []
    for g in gpus:
        for name, bw in host.GPU_MEMORY_BANDWIDTH_BYTES_S.items():
            if name.split()[0] in g["name"] and (len(name.split()) == 1 or name.split()[1] in g["name"]):
                ctx.store.event("memory_bandwidth", bytes_s=bw, source=f"datasheet ({name})")
                return
    ctx.store.event("memory_bandwidth", bytes_s=host.memory_bandwidth_bytes_s(), source="measured host memcpy")


def measure(ctx: StudyContext, trials, desc: str) -> None:
    """Record the bandwidth limit, then run the trials (the shape model size and quantization share)."""
    with ctx.session() as s:
        bandwidth_limit(ctx, s.monitor.has_gpu)
        s.runner.run(trials, desc=desc)
        resident_memory(ctx, s.backend, ctx.cfg.models)
    ctx.store.finalize()


def resident_memory(ctx: StudyContext, backend, models: list[str]) -> None:
    """Each model's own memory once resident and warm (weights + KV cache), not the server's total:
    several models can be resident at once, so the tree's RSS would mix them."""
    done = set(ctx.store.events().get("model", pd.Series(dtype=str))) if len(ctx.store.events()) else set()
    for m in models:
        if m in done:
            continue
        backend.load(m)
        backend.generate(m, "ok", Sampling(num_predict=2))
        ctx.store.event("resident_memory", model=m, **backend.resident_memory(m))


def run(ctx: StudyContext) -> dict[str, Any]:
    measure(ctx, plan(ctx), "model size")
    return analyze(ctx)


def per_model(ctx: StudyContext, df: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    ok = measured(df)
    facts = ctx.store.manifest().get("models", {})
    ev = ctx.store.events()
    bw = ev[ev["kind"] == "memory_bandwidth"].iloc[-1] if len(ev) and (ev["kind"] == "memory_bandwidth").any() else None
    mem = ev[ev["kind"] == "resident_memory"] if len(ev) and (ev["kind"] == "resident_memory").any() else None
    rows = []
    for m in models:
        warm, cold = ok[(ok["variant"] == m) & (ok["cache_state"] == "warm")], ok[(ok["variant"] == m) & (ok["cache_state"] != "warm")]
        f = facts.get(m, {})
        dec = est(warm["decode_tok_s"])
        row = {"model": m, "quantization": f.get("quantization"), "parameters": f.get("parameter_count"),
               "file_bytes": f.get("size_bytes"), "n_warm": len(warm), "n_cold": len(cold)}
        for name, series in (("load_s", cold["load_s"]), ("cold_ttft_s", cold["ttft_s"]), ("ttft_s", warm["ttft_s"]),
                             ("prefill_tok_s", warm["prefill_tok_s"]), ("decode_tok_s", warm["decode_tok_s"]),
                             ("e2e_s", warm["e2e_s"])):
            e = est(series)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = e.value, e.lo, e.hi
        if mem is not None and (mem["model"] == m).any():
            got = mem[mem["model"] == m].iloc[-1]
            row["model_memory_bytes"] = got.get("model_memory_bytes")
            if pd.notna(got.get("model_vram_bytes", np.nan)):
                row["model_vram_bytes"] = got.get("model_vram_bytes")
        if "res_energy_per_token_j" in warm and warm["res_energy_per_token_j"].notna().any():
            row["energy_per_token_j"] = est(warm["res_energy_per_token_j"]).value
        if bw is not None and f.get("size_bytes"):
            row["decode_limit_tok_s"] = bw["bytes_s"] / f["size_bytes"]
            row["decode_pct_of_limit"] = 100 * dec.value / row["decode_limit_tok_s"]
            row["bandwidth_source"] = bw["source"]
        rows.append(row)
    return pd.DataFrame(rows)


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    return {"trials": df, "table": per_model(ctx, df, ctx.cfg.models), "manifest": ctx.store.manifest(),
            "failures": failures(df)}


def conclusions(res: dict[str, Any]) -> str:
    t = res["table"].set_index("model")
    ok = measured(res["trials"])
    lines = ["### What the measurements say"]
    by_size = t.sort_values("file_bytes") if t["file_bytes"].notna().all() else t
    small, large = by_size.index[0], by_size.index[-1]
    for m in (small, large):
        r = t.loc[m]
        w = ok[(ok["variant"] == m) & (ok["cache_state"] == "warm")]
        c = ok[(ok["variant"] == m) & (ok["cache_state"] != "warm")]
        lim = (f", {r['decode_pct_of_limit']:.0f}% of the {r['decode_limit_tok_s']:.0f} tok/s bandwidth limit"
               if pd.notna(r.get("decode_pct_of_limit")) else "")
        size = f"{r['file_bytes'] / 1e6:.0f} MB" if pd.notna(r["file_bytes"]) else "size unknown"
        if pd.notna(r.get("model_memory_bytes", np.nan)):
            size += f", {r['model_memory_bytes'] / 2**20:.0f} MiB resident"
        lines.append(f"- **{m}** ({r['quantization']}, {size}): loads in {fmt_s(est(c['load_s']))}, warm TTFT "
                     f"{fmt_s(est(w['ttft_s']))}, decodes at {r['decode_tok_s']:.0f} tok/s [{r['decode_tok_s_lo']:.0f}, "
                     f"{r['decode_tok_s_hi']:.0f}]{lim}.")
    if pd.notna(t.loc[small, "decode_tok_s"]) and pd.notna(t.loc[large, "decode_tok_s"]) and t.loc[large, "decode_tok_s"]:
        from .. import stats

        rd = stats.ratio(ok[(ok["variant"] == small) & (ok["cache_state"] == "warm")]["decode_tok_s"],
                         ok[(ok["variant"] == large) & (ok["cache_state"] == "warm")]["decode_tok_s"])
        rl = stats.ratio(ok[(ok["variant"] == large) & (ok["cache_state"] != "warm")]["load_s"],
                         ok[(ok["variant"] == small) & (ok["cache_state"] != "warm")]["load_s"])
        lines.append(f"- The smaller model decodes {rd.value:.2f}× as fast [{rd.lo:.2f}, {rd.hi:.2f}] (n={rd.n}); "
                     f"the larger one takes {rl.value:.2f}× as long to load [{rl.lo:.2f}, {rl.hi:.2f}].")
    if "energy_per_token_j" in t:
        lines.append("- Energy per output token (GPU): " + ", ".join(
            f"{m} {t.loc[m, 'energy_per_token_j']:.3g} J" for m in t.index if pd.notna(t.loc[m, "energy_per_token_j"])) + ".")
    else:
        lines.append("- No GPU was sampled, so there is no energy per token in this run.")
    if res["failures"]:
        lines.append("- " + res["failures"])
    lines += ["", method_note(res["manifest"])]
    return "\n".join(lines)
