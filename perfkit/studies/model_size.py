"""Study 2: small vs large model: load time, TTFT, prefill and decode speed, memory, energy per
token (with a GPU), and decode speed as a share of the memory-bandwidth limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perfkit.core import fmt
from perfkit.client.backends.base import Sampling
from perfkit.measure.cache_states import ensure_warm
from perfkit.measure.runner import plan as plan_trials
from perfkit.analysis.requests import est, failures, fmt_s, latency_table, measured, method_note, negative_overhead_note, noisy_note, per_request_itl, state_note
from perfkit.studies.base import StudyContext


def plan(ctx: StudyContext):
    c = ctx.cfg
    kw = dict(prompt_words=c.prompt_words, sampling=Sampling(c.num_predict))
    return (plan_trials(c.models, c.reps, prefix="warm", warmup=1, cache_state="warm", seed=ctx.params.seed, **kw)
            + plan_trials(c.models, c.cold_reps, prefix="cold", warmup=0, cache_state="cold_memory",
                          seed=ctx.params.seed + 1, **kw))


def device_facts(ctx: StudyContext, s, models: list[str]) -> None:
    """Record, per model, the device that runs it (and its memory bandwidth: the decode limit) and
    what the resident model itself occupies. Asked of the server's controller: the embedded engine is
    the host CPU; a local Ollama says through /api/ps and NVML; a remote server is "unknown, because"."""
    ev = ctx.store.events()
    done = set(ev[ev["kind"] == "device"]["model"]) if len(ev) and (ev["kind"] == "device").any() else set()
    for m in models:
        if m in done:
            continue
        record_device(ctx, s, m)


def record_device(ctx: StudyContext, s, model: str) -> None:
    """One "device" event: where ``model`` runs, and its own memory read while it is resident and used."""
    ensure_warm(s.backend, model, s.runner.keep_alive)
    device = s.control.device(model, s.backend)  # the first call measures host bandwidth: seconds
    # A short keep-alive may have put the model to sleep meanwhile: use it again, then read its memory.
    ensure_warm(s.backend, model, s.runner.keep_alive)
    s.backend.generate(model, "ok", Sampling(num_predict=2), keep_alive=s.runner.keep_alive)
    ctx.store.event("device", model=model, **device.as_record(), **s.backend.resident_memory(model))


def measure(ctx: StudyContext, trials, desc: str) -> None:
    """Run the trials, then record each model's device and resident memory (the shape model size and
    quantization share)."""
    with ctx.session() as s:
        s.runner.run(trials, desc=desc)
        device_facts(ctx, s, ctx.cfg.models)
    ctx.store.finalize()


def run(ctx: StudyContext) -> dict[str, Any]:
    measure(ctx, plan(ctx), "model size")
    return analyze(ctx)


def per_model(ctx: StudyContext, df: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    ok = measured(df)
    facts = ctx.store.manifest().get("models", {})
    ev = ctx.store.events()
    dev = ev[ev["kind"] == "device"] if len(ev) and (ev["kind"] == "device").any() else None
    rows = []
    for m in models:
        warm, cold = ok[(ok["variant"] == m) & (ok["cache_state"] == "warm")], ok[(ok["variant"] == m) & (ok["cache_state"] != "warm")]
        f = facts.get(m, {})
        dec = est(warm["decode_tok_s"])
        row = {"model": m, "quantization": f.get("quantization"), "parameters": f.get("parameter_count"),
               "file_bytes": f.get("size_bytes"), "n_warm": len(warm), "n_cold": len(cold)}
        for name, series in (("load_s", cold["load_s"]), ("cold_ttft_s", cold["ttft_s"]), ("ttft_s", warm["ttft_s"]),
                             ("prefill_tok_s", warm["prefill_tok_s"]), ("decode_tok_s", warm["decode_tok_s"]),
                             ("e2e_s", warm["e2e_s"]), ("tpot_s", warm["tpot_s"])):
            e = est(series)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = e.value, e.lo, e.hi
        if "prefill_tok_s_max" in warm and warm["prefill_tok_s_max"].notna().any():
            # Ollama counts cached prompt tokens but times only uncached ones: only an upper bound exists.
            row["prefill_tok_s_max"] = est(warm["prefill_tok_s_max"]).value
        row["itl_p50"] = fmt.estimate(est(per_request_itl(warm, "median")), "duration")
        d = dev[dev["model"] == m].iloc[-1].to_dict() if dev is not None and (dev["model"] == m).any() else {}
        row["model_memory_bytes"] = d.get("model_memory_bytes")
        row["model_vram_bytes"] = d.get("model_vram_bytes")
        row["device"] = d.get("device")
        row["cpu_share"] = d.get("cpu_share")
        row["offload_evidence"] = d.get("offload_evidence")
        bw = d.get("memory_bandwidth_bytes_s")
        why = d.get("unknown_because")
        weights = row["model_vram_bytes"] if d.get("device") == "gpu" and row["model_vram_bytes"] else f.get("size_bytes")
        if bw and not pd.isna(bw) and weights:
            limit = bw / weights
            pct = 100 * dec.value / limit
            if pct > 100:
                # Faster than physics allows: the limit or the measurement is wrong; never print it as a result.
                row["limit_unknown_because"] = (f"the measured decode ({fmt.rate(dec.value)}) exceeds the computed "
                                                f"limit ({fmt.rate(limit)}, {d.get('bandwidth_source')}): suspect")
            else:
                row["decode_limit_tok_s"], row["decode_pct_of_limit"] = limit, pct
                row["bandwidth_source"] = d.get("bandwidth_source")
        else:
            row["limit_unknown_because"] = why if isinstance(why, str) and why else (
                "the device that runs the model was not recorded" if not d else "its memory bandwidth is unknown")
        if "res_energy_per_token_idle_subtracted_j" in warm and warm["res_energy_per_token_idle_subtracted_j"].notna().any():
            e = est(warm["res_energy_per_token_idle_subtracted_j"])
            row["energy_per_token_j"], row["energy_per_token_j_lo"], row["energy_per_token_j_hi"] = e.value, e.lo, e.hi
            row["energy_method"] = "idle-subtracted"
        elif "res_energy_per_token_j" in warm and warm["res_energy_per_token_j"].notna().any():
            e = est(warm["res_energy_per_token_j"])
            row["energy_per_token_j"], row["energy_per_token_j_lo"], row["energy_per_token_j_hi"] = e.value, e.lo, e.hi
            row["energy_method"] = "not idle-subtracted (no idle baseline measured)"
        rows.append(row)
    return pd.DataFrame(rows)


def offload_warnings(table: pd.DataFrame) -> list[str]:
    """A partial offload explains a slow *warm* model better than anything else: say it first."""
    out = []
    for _, r in table.iterrows():
        if r.get("device") == "gpu+cpu":
            out.append(f"> ⚠ **Partial offload: {r['model']}** has {r['cpu_share']:.0%} of its weights on the CPU "
                       f"({r['offload_evidence']}). Its warm speed is bounded by the CPU part, not by cold start.")
    return out


def display_table(t: pd.DataFrame) -> pd.DataFrame:
    """The per-model table in readable units (3 significant digits, MB/GB, 32.8B parameters)."""
    rows = []
    for _, r in t.iterrows():
        lim = (f"{r['decode_pct_of_limit']:.0f}% of {fmt.rate(r['decode_limit_tok_s'])}"
               if pd.notna(r.get("decode_pct_of_limit", np.nan)) else f"unknown: {r.get('limit_unknown_because')}")
        prefill = (fmt.rate(r["prefill_tok_s"]) if pd.notna(r.get("prefill_tok_s", np.nan)) else
                   f"≤ {fmt.rate(r['prefill_tok_s_max'])} (upper bound)" if pd.notna(r.get("prefill_tok_s_max", np.nan))
                   else "n/a")
        rows.append({"model": r["model"], "quant": r["quantization"], "params": fmt.count(r["parameters"]),
                     "file": fmt.size(r["file_bytes"]), "device": r.get("device") or "unknown",
                     "load (cold)": fmt.duration_ci(r["load_s"], r["load_s_lo"], r["load_s_hi"]),
                     "warm TTFT": fmt.duration_ci(r["ttft_s"], r["ttft_s_lo"], r["ttft_s_hi"]),
                     "TPOT": fmt.duration_ci(r["tpot_s"], r["tpot_s_lo"], r["tpot_s_hi"]),
                     "ITL p50": r["itl_p50"], "prefill": prefill,
                     "decode": f"{fmt.rate(r['decode_tok_s'])}" + (f" [{fmt.number(r['decode_tok_s_lo'])}, "
                                                                     f"{fmt.number(r['decode_tok_s_hi'])}]"
                                                                     if pd.notna(r["decode_tok_s_lo"]) else ""),
                     "decode vs bandwidth limit": lim,
                     "model memory": fmt.mib(r.get("model_memory_bytes")),
                     "J/token": (fmt.number(r["energy_per_token_j"]) if pd.notna(r.get("energy_per_token_j", np.nan))
                                 else "no GPU sampled"),
                     "n warm / cold": f"{r['n_warm']} / {r['n_cold']}"})
    return pd.DataFrame(rows).set_index("model")


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    return {"trials": df, "table": per_model(ctx, df, ctx.cfg.models), "manifest": ctx.store.manifest(),
            "failures": failures(df)}


def conclusions(res: dict[str, Any]) -> str:
    t = res["table"].set_index("model")
    ok = measured(res["trials"])
    lines = offload_warnings(res["table"]) + ["### What the measurements say"]
    for w in (noisy_note(res["trials"]), negative_overhead_note(res["trials"])):
        if w:
            lines.append("- " + w)
    by_size = t.sort_values("file_bytes") if t["file_bytes"].notna().all() else t
    small, large = by_size.index[0], by_size.index[-1]
    for m in (small, large):
        r = t.loc[m]
        w = ok[(ok["variant"] == m) & (ok["cache_state"] == "warm")]
        c = ok[(ok["variant"] == m) & (ok["cache_state"] != "warm")]
        if pd.notna(r.get("decode_pct_of_limit", np.nan)):
            lim = (f", {r['decode_pct_of_limit']:.0f}% of the {fmt.rate(r['decode_limit_tok_s'])} limit its device's "
                   f"memory bandwidth allows ({r['bandwidth_source']})")
        else:
            lim = f"; its bandwidth limit is unknown, because {r.get('limit_unknown_because')}"
        size = fmt.size(r["file_bytes"]) if pd.notna(r["file_bytes"]) else "size unknown"
        if pd.notna(r.get("model_memory_bytes", np.nan)):
            size += f", {fmt.mib(r['model_memory_bytes'])} resident"
        lines.append(f"- **{m}** ({r['quantization']}, {fmt.count(r['parameters'])} parameters, {size}): loads in "
                     f"{fmt_s(est(c['load_s']))}, warm TTFT {fmt_s(est(w['ttft_s']))}, decodes at "
                     f"{fmt.estimate(est(w['decode_tok_s']), 'rate')}{lim}.")
    if pd.notna(t.loc[small, "decode_tok_s"]) and pd.notna(t.loc[large, "decode_tok_s"]) and t.loc[large, "decode_tok_s"]:
        from perfkit.analysis import stats

        rd = stats.ratio(ok[(ok["variant"] == small) & (ok["cache_state"] == "warm")]["decode_tok_s"],
                         ok[(ok["variant"] == large) & (ok["cache_state"] == "warm")]["decode_tok_s"])
        rl = stats.ratio(ok[(ok["variant"] == large) & (ok["cache_state"] != "warm")]["load_s"],
                         ok[(ok["variant"] == small) & (ok["cache_state"] != "warm")]["load_s"])
        lines.append(f"- The smaller model decodes {fmt.estimate(rd, 'ratio')} as fast; the larger one takes "
                     f"{fmt.estimate(rl, 'ratio')} as long to load.")
    if "energy_per_token_j" in t and t["energy_per_token_j"].notna().any():
        lines.append("- Energy per output token (GPUs holding the server's processes, "
                     f"{t['energy_method'].dropna().iloc[0]}): " + ", ".join(
                         f"{m} {fmt.number(t.loc[m, 'energy_per_token_j'])} J [{fmt.number(t.loc[m, 'energy_per_token_j_lo'])}, "
                         f"{fmt.number(t.loc[m, 'energy_per_token_j_hi'])}]"
                         for m in t.index if pd.notna(t.loc[m, "energy_per_token_j"])) + ".")
    else:
        lines.append("- No GPU holding the server's processes was sampled, so there is no energy per token in this run.")
    for note in (state_note(res["trials"]), res["failures"]):
        if note:
            lines.append("- " + note)
    lines += ["", method_note(res["manifest"])]
    return "\n".join(lines)
