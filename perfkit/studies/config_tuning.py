"""Study 4: server settings × client concurrency. The server restarts for each setting, each
setting is checked to have taken effect, and the best setting per objective is named with its CI."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from .. import stats
from ..backends import LlamaServerBackend, OllamaBackend
from ..backends.base import Sampling
from ..runner import throughput
from ..settings import check_applied, validate_settings
from ._common import est, failures, fmt_s, measured, method_note
from ._context import StudyContext


def label(setting: dict) -> str:
    return ", ".join(f"{k.removeprefix('OLLAMA_')}={v}" for k, v in validate_settings(setting).items()) or "defaults"


def verify(session, model: str) -> dict[str, Any]:
    """Did the server really start with these settings? (embedded: the model process's own arguments)."""
    b = session.backend
    b.load(model)
    if isinstance(b, LlamaServerBackend):
        r = b._client.get("/models").json()
        args = next((m.get("status", {}).get("args", []) for m in r.get("data", []) if m["id"] == model), [])
        checks = check_applied(session.settings, args)
        props = b._client.get("/props", params={"model": model}).json()
        return {"applied": checks, "all_applied": all(checks.values()), "total_slots": props.get("total_slots"),
                "n_ctx_per_slot": (props.get("default_generation_settings") or {}).get("n_ctx")}
    if isinstance(b, OllamaBackend):
        ps = next((m for m in b.ps() if m.get("name") == model or m.get("model") == model), {})
        want = session.settings.get("OLLAMA_CONTEXT_LENGTH")
        checks = {"OLLAMA_CONTEXT_LENGTH": str(ps.get("context_length")) == str(want)} if want else {}
        return {"applied": checks, "all_applied": all(checks.values()) if checks else None,
                "note": "Ollama exposes only the context length of a loaded model; other settings are not verifiable"}
    return {"applied": {}, "all_applied": None}


def run(ctx: StudyContext) -> dict[str, Any]:
    c = ctx.cfg
    with ctx.session(c.settings[0]) as s:
        for i, setting in enumerate(c.settings):
            if i:
                s.restart(setting)
            check = verify(s, c.model)
            ctx.store.event("setting_check", config_index=i, config=label(setting), **check)
            for conc in c.concurrency:
                s.runner.closed_loop(c.model, conc, c.requests, series=f"cfg{i}/c{conc}",
                                     sampling=Sampling(c.num_predict), prompt_words=c.prompt_words,
                                     tags={"config": label(setting), "config_index": i})
    ctx.store.finalize()
    return analyze(ctx)


def _throughput_ci(g: pd.DataFrame) -> stats.Estimate:
    """Output tokens/s of a closed-loop series, Little's law form (achieved concurrency × Σtokens / Σlatency),
    with a bootstrap CI over its requests."""
    tok, lat = g["output_tokens"].to_numpy(float), g["e2e_s"].to_numpy(float)
    conc = throughput(g)["concurrency_achieved"]
    value = conc * tok.sum() / lat.sum()
    if len(g) < 2:
        return stats.Estimate("throughput", value, math.nan, math.nan, len(g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.bootstrap((tok, lat), lambda a, b, axis=-1: conc * a.sum(axis=axis) / b.sum(axis=axis),
                           paired=True, vectorized=True, n_resamples=stats.N_RESAMPLES, method="percentile",
                           random_state=np.random.default_rng(stats.SEED))
    return stats.Estimate("throughput", value, float(res.confidence_interval.low),
                          float(res.confidence_interval.high), len(g))


def analyze(ctx: StudyContext) -> dict[str, Any]:
    df = ctx.store.trials()
    ev = ctx.store.events()
    checks = ev[ev["kind"] == "setting_check"].drop_duplicates("config_index", keep="last") if len(ev) else pd.DataFrame()
    rows = []
    ok = measured(df)
    for (i, conc), g in ok.groupby(["config_index", "concurrency"]):
        tp = throughput(g)
        ttft50, ttft99 = est(g["ttft_s"]), est(g["ttft_s"], "p99")
        dec, tps = est(g["decode_tok_s"]), _throughput_ci(g)
        chk = checks[checks["config_index"] == i].iloc[0] if len(checks) and (checks["config_index"] == i).any() else None
        rows.append({"config_index": i, "config": g["config"].iloc[0], "concurrency": conc, "n": len(g),
                     "ttft_p50_s": ttft50.value, "ttft_p50_lo": ttft50.lo, "ttft_p50_hi": ttft50.hi,
                     "ttft_p99_s": ttft99.value, "ttft_p99_lo": ttft99.lo, "ttft_p99_hi": ttft99.hi,
                     "decode_tok_s": dec.value, "decode_lo": dec.lo, "decode_hi": dec.hi,
                     "throughput_tok_s": tps.value, "throughput_lo": tps.lo, "throughput_hi": tps.hi,
                     "requests_s": tp["requests_s"],
                     "server_rss_max_bytes": g["res_server_rss_bytes_max"].max() if "res_server_rss_bytes_max" in g else np.nan,
                     "setting_applied": None if chk is None else chk.get("all_applied"),
                     "total_slots": None if chk is None else chk.get("total_slots")})
    table = pd.DataFrame(rows)
    return {"trials": df, "table": table, "checks": checks, "best": best(table), "manifest": ctx.store.manifest(),
            "failures": failures(df)}


def best(table: pd.DataFrame) -> dict[str, dict]:
    if table.empty:
        return {}
    lo_c, hi_c = table["concurrency"].min(), table["concurrency"].max()
    lat_rank = table[table["concurrency"] == lo_c].sort_values("ttft_p50_s")
    thr_rank = table[table["concurrency"] == hi_c].sort_values("throughput_tok_s", ascending=False)
    lat, thr = lat_rank.iloc[0], thr_rank.iloc[0]
    mem = table.groupby("config")["server_rss_max_bytes"].max().sort_values()
    return {
        "latency": {"config": lat["config"], "at_concurrency": int(lo_c), "value": lat["ttft_p50_s"],
                    "lo": lat["ttft_p50_lo"], "hi": lat["ttft_p50_hi"], "n": int(lat["n"]), "metric": "TTFT p50 (s)",
                    **_runner_up(lat_rank, "ttft_p50_lo", "ttft_p50_hi")},
        "throughput": {"config": thr["config"], "at_concurrency": int(hi_c), "value": thr["throughput_tok_s"],
                       "lo": thr["throughput_lo"], "hi": thr["throughput_hi"], "n": int(thr["n"]),
                       "metric": "output tok/s", **_runner_up(thr_rank, "throughput_lo", "throughput_hi")},
        "memory": {"config": mem.index[0], "value": float(mem.iloc[0]), "metric": "peak server RSS (bytes)",
                   "lo": math.nan, "hi": math.nan, "n": int(table[table["config"] == mem.index[0]]["n"].sum())},
    }


def _runner_up(ranked: pd.DataFrame, lo: str, hi: str) -> dict[str, Any]:
    """The second best, and whether the best's CI overlaps it (then this n does not separate them)."""
    if len(ranked) < 2:
        return {}
    a, b = ranked.iloc[0], ranked.iloc[1]
    return {"runner_up": b["config"], "overlaps_runner_up": bool(a[lo] <= b[hi] and b[lo] <= a[hi])}


def _resolved(best: dict) -> str:
    if best.get("overlaps_runner_up"):
        return (f" Its CI overlaps the runner-up's (**{best['runner_up']}**): at this n the two are not "
                "distinguishable; add requests to separate them.")
    return f" Its CI is clear of the runner-up's ({best['runner_up']})." if best.get("runner_up") else ""


def conclusions(res: dict[str, Any]) -> str:
    b = res["best"]
    t = res["table"]
    lines = ["### What the measurements say"]
    if not b:
        return "\n".join(lines + ["- No successful trials.", res["failures"]])
    L, T, M = b["latency"], b["throughput"], b["memory"]
    lines.append(f"- **Latency** (TTFT p50 at concurrency {L['at_concurrency']}): best is **{L['config']}** with "
                 f"{fmt_s(stats.Estimate('median', L['value'], L['lo'], L['hi'], L['n']))}." + _resolved(L))
    lines.append(f"- **Throughput** (output tok/s at concurrency {T['at_concurrency']}): best is **{T['config']}** with "
                 f"{T['value']:.0f} tok/s [{T['lo']:.0f}, {T['hi']:.0f}] (n={T['n']})." + _resolved(T))
    if not math.isnan(M["value"]):
        lines.append(f"- **Memory**: lowest peak server RSS with **{M['config']}**, {M['value'] / 2**20:.0f} MiB "
                     f"(the maximum over {M['n']} requests' windows).")
    bad = t[t["setting_applied"] == False]  # noqa: E712 - None means "not verifiable"
    if len(bad):
        lines.append(f"- ⚠ Settings not confirmed in the server's own arguments for: {', '.join(bad['config'].unique())}.")
    elif t["setting_applied"].notna().any():
        lines.append("- Every setting was confirmed in the model process's own arguments after each restart.")
    if res["failures"]:
        lines.append("- " + res["failures"])
    lines += ["", method_note(res["manifest"], "Throughput CI: bootstrap over a series' requests of "
                                               "achieved concurrency × Σ output tokens / Σ latency.")]
    return "\n".join(lines)
