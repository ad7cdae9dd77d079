"""Per-model analysis shared by every study that compares models (size, quantization): one table row per
model, the device each runs on and its bandwidth limit, a partial offload said first, and the figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perfkit.analysis import figures as F, stats
from perfkit.analysis.series import censored
from perfkit.analysis.requests import attempted, est, measured, per_request_itl
from perfkit.core import fmt
from perfkit.core.events import DeviceFound, records_of
from perfkit.core.units import BYTES, SECONDS, TOKENS_PER_S
from perfkit.core.store import RunStore


def device_events(events: pd.DataFrame) -> dict[str, dict]:
    """model → its last ``device`` event (where it runs, its bandwidth, its resident memory)."""
    return {r["model"]: r for r in records_of(events, DeviceFound)}  # in order: a model's last one wins


def model_figures(study: str, df: pd.DataFrame, events: pd.DataFrame, models: list[str],
                  workload: dict[str, Any]) -> list[F.Figure | None]:
    """Per model: warm decode and prefill speed, warm TTFT, cold load, resident memory, energy per token and
    GPU utilization where a GPU was sampled (warm requests; cold ones for the load)."""
    ok = measured(df)
    tried = attempted(df)
    if "drift" in tried:
        tried = tried[~tried["drift"].astype("boolean").fillna(False).astype(bool)]
    if "drift" in ok:  # drift requests decode greedily with logprobs: not the same request as a speed trial
        ok = ok[~ok["drift"].astype("boolean").fillna(False).astype(bool)]
    dev = device_events(events)
    out: list[F.Figure | None] = []
    for m in models:
        rows = ok[ok["variant"] == m] if len(ok) and "variant" in ok else ok.iloc[0:0]
        warm, cold = rows[rows["cache_state"] == "warm"], rows[rows["cache_state"] != "warm"]
        w = {"model": m}
        out += [
            F.per_request(study, "decode_rate", warm, "decode_tok_s", where=w, model=m, workload=workload,
                          headline="decode speed"),
            F.per_request(study, "ttft", warm, "ttft_s", where=w, model=m, workload=workload),
            # Ollama reports no exact prefill rate (only an upper bound): then there is no figure.
            F.per_request(study, "prefill_rate", warm, "prefill_tok_s", where=w, model=m, workload=workload),
            F.per_request(study, "load", cold, "load_s", where=w, model=m),
            F.reading(study, "memory", dev.get(m, {}).get("model_memory_bytes"), where=w, model=m,
                      headline="memory"),
            *resource_figures(study, warm, w, m, workload),
        ]
        every = tried[tried["variant"] == m] if len(tried) and "variant" in tried else tried.iloc[0:0]
        warm_all = every[every["cache_state"] == "warm"] if "cache_state" in every else every
        out += [F.failed_share(study, every, where=w, model=m, workload=workload),
                F.per_request(study, "ttft_p99", warm_all, lambda r: censored(r, "ttft_s"), where=w, model=m,
                              workload=workload)]
    return out


def speed_claim(study: str, figures: F.FigureSet, models: list[str], confidence: float = stats.CONFIDENCE):
    """The fastest decoding model as a tested claim at ``confidence``
    (:func:`perfkit.analysis.decisions.best_of`), or None."""
    from perfkit.analysis.decisions import best_of

    return best_of({m: figures.get(f"{study}/decode_rate/{m}") for m in models
                    if figures.get(f"{study}/decode_rate/{m}") is not None}, confidence=confidence)


def speed_settled(study: str, df: pd.DataFrame, events: pd.DataFrame, models: list[str], workload: dict[str, Any],
                  confidence: float) -> bool:
    """Whether the recorded warm requests answer "which decodes fastest" (the fastest called, or the rest shown
    equal to it): the stopping rule of a study measured in looks."""
    if "trial_id" in df and len(df):
        df = df[df["trial_id"].astype(str).str.startswith("warm/")]
    claim = speed_claim(study, F.FigureSet(model_figures(study, df, events, models, workload)), models, confidence)
    return claim is None or claim.settled


def warm_latency(trials: pd.DataFrame) -> pd.DataFrame:
    """p50/p90/p99 (CI, n) of TTFT, e2e, TPOT and ITL of each model's warm requests."""
    from perfkit.analysis.requests import latency_table

    w = measured(trials)
    return latency_table(w[w["cache_state"] == "warm"], "variant") if len(w) else pd.DataFrame()


def resource_figures(study: str, rows: pd.DataFrame, where: dict, model: str | None,
                     workload: dict[str, Any]) -> list[F.Figure | None]:
    """Energy per output token (idle-subtracted where a baseline exists) and GPU utilization of the rows'
    requests, where a GPU holding the server was sampled."""
    import re

    idle = F._col(rows, "res_energy_per_token_idle_subtracted_j")
    col = "res_energy_per_token_idle_subtracted_j" if idle.notna().any() else "res_energy_per_token_j"
    out = [F.per_request(study, "energy_per_token", rows, col, where=where, model=model, workload=workload),
           F.per_request(study, "gpu_util", rows, lambda r: F._col(r, "res_gpu_util_pct_mean") / 100, where=where,
                         model=model, workload=workload, headline="GPU utilization")]
    if out[1] is None:
        # Which GPU holds the server is unknown: each GPU's own utilization, never their average.
        for c in sorted(c for c in rows.columns if re.fullmatch(r"res_gpu[\w.:-]+_gpu_util_pct_mean", c)):
            gpu = c[len("res_gpu"):-len("_gpu_util_pct_mean")]
            out.append(F.per_request(study, "gpu_util", rows, lambda r, c=c: F._col(r, c) / 100,
                                     where={**where, "gpu": gpu}, model=model, workload=workload,
                                     headline=f"GPU {gpu} utilization"))
    return out


def per_model(store: RunStore, df: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """One row per model: facts (quantization, parameters, file size), cold load and warm TTFT, prefill and
    decode speed with CIs, the device and the decode's share of its memory-bandwidth limit, resident memory
    and energy per token."""
    ok = measured(df)
    facts = store.manifest().get("models", {})
    dev = device_events(store.events())
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
        row["itl_p50"] = SECONDS.estimate(est(per_request_itl(warm, "median")))
        d = dev.get(m, {})
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
                row["limit_unknown_because"] = (f"the measured decode ({TOKENS_PER_S.text(dec.value)}) exceeds the "
                                                f"computed limit ({TOKENS_PER_S.text(limit)}, "
                                                f"{d.get('bandwidth_source')}): suspect")
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
        elif "res_energy_unknown_because" in warm and warm["res_energy_unknown_because"].notna().any():
            row["energy_unknown_because"] = warm["res_energy_unknown_because"].dropna().iloc[0]
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
        lim = (f"{r['decode_pct_of_limit']:.0f}% of {TOKENS_PER_S.text(r['decode_limit_tok_s'])}"
               if pd.notna(r.get("decode_pct_of_limit", np.nan)) else f"unknown: {r.get('limit_unknown_because')}")
        prefill = (TOKENS_PER_S.text(r["prefill_tok_s"]) if pd.notna(r.get("prefill_tok_s", np.nan)) else
                   f"≤ {TOKENS_PER_S.text(r['prefill_tok_s_max'])} (upper bound)" if pd.notna(r.get("prefill_tok_s_max", np.nan))
                   else "n/a")
        rows.append({"model": r["model"], "quant": r["quantization"], "params": fmt.count(r["parameters"]),
                     "file": fmt.size(r["file_bytes"]), "device": r.get("device") or "unknown",
                     "load (cold)": SECONDS.ci(r["load_s"], r["load_s_lo"], r["load_s_hi"]),
                     "warm TTFT": SECONDS.ci(r["ttft_s"], r["ttft_s_lo"], r["ttft_s_hi"]),
                     "TPOT": SECONDS.ci(r["tpot_s"], r["tpot_s_lo"], r["tpot_s_hi"]),
                     "ITL p50": r["itl_p50"], "prefill": prefill,
                     "decode": TOKENS_PER_S.ci(r["decode_tok_s"], r["decode_tok_s_lo"], r["decode_tok_s_hi"]),
                     "decode vs bandwidth limit": lim,
                     "model memory": BYTES.text(r.get("model_memory_bytes")),
                     "J/token": (fmt.number(r["energy_per_token_j"]) if pd.notna(r.get("energy_per_token_j", np.nan))
                                 else f"unknown: {r['energy_unknown_because']}"
                                 if isinstance(r.get("energy_unknown_because"), str) else "no GPU sampled"),
                     "n warm / cold": f"{r['n_warm']} / {r['n_cold']}"})
    return pd.DataFrame(rows).set_index("model")
