"""What the server and its host did under a load, for any study that sends load: one row per series from its
window (see :func:`perfkit.analysis.series.load_row`), and where each reading came from."""

from __future__ import annotations

import pandas as pd

from perfkit.core import fmt
from perfkit.core.units import BYTES, WATTS


def load_display(t: pd.DataFrame) -> pd.DataFrame:
    """What the server and its host did under each load: the GPUs (utilization, per GPU when several, power,
    energy per output token over the whole window), the server's own metrics (requests running and queued,
    slots per decode, KV cache, prompt tokens served from its cache) and its host's CPU; a column that no
    source measured is left out, and where a reading is missing the reason is given."""
    if t.empty:
        return t

    def mean_max(r, m, f=fmt.number):
        a, b = r.get(f"{m}_mean"), r.get(f"{m}_max")
        return f"{f(a)} (max {f(b)})" if pd.notna(a) else None

    rows = []
    for _, r in t.iterrows():
        per = r.get("per_gpu_util") or {}
        util = (fmt.pct(r["gpu_util_pct_mean"] / 100) if pd.notna(r.get("gpu_util_pct_mean")) else None)
        if util and len(per) > 1:
            util += " (" + ", ".join(f"GPU {i}: {fmt.pct(v / 100)}" for i, v in sorted(per.items())) + ")"
        rows.append({"setting": r["config"], "load": r["load"], "window": fmt.duration(r["window_s"]),
                     "GPU utilization": util,
                     "GPU power": WATTS.text(r["power_w_mean"]) if pd.notna(r.get("power_w_mean")) else None,
                     "energy / output token": (f"{fmt.number(r['energy_per_token_j'])} J"
                                               if pd.notna(r.get("energy_per_token_j")) else None),
                     "GPU memory (max)": BYTES.text(r["gpu_mem_used_bytes_max"]) if pd.notna(r.get("gpu_mem_used_bytes_max")) else None,
                     "requests running": mean_max(r, "server_requests_running"),
                     "requests queued": mean_max(r, "server_requests_waiting"),
                     "busy slots per decode": (fmt.number(r["server_busy_slots_per_decode_mean"])
                                               if pd.notna(r.get("server_busy_slots_per_decode_mean")) else None),
                     "KV cache used (max)": (fmt.pct(r["server_kv_cache_usage_ratio_max"])
                                             if pd.notna(r.get("server_kv_cache_usage_ratio_max")) else None),
                     "prompt tokens from the server's cache": (fmt.pct(r["prompt_cached_share"])
                                                               if pd.notna(r.get("prompt_cached_share")) else None),
                     "prefix-cache hits": (fmt.pct(r["prefix_cache_hit_share"])
                                           if pd.notna(r.get("prefix_cache_hit_share")) else None),
                     "draft tokens accepted": (f"{fmt.pct(r['spec_acceptance'])} of {int(r['spec_draft_tokens'])}"
                                               if pd.notna(r.get("spec_acceptance")) else None),
                     "server host CPU": (fmt.pct(r["server_host_cpu_pct_mean"] / 100)
                                         if pd.notna(r.get("server_host_cpu_pct_mean")) else None),
                     "server CPU (cores)": (fmt.number(r["server_cpu_pct_mean"] / 100)
                                            if pd.notna(r.get("server_cpu_pct_mean")) else None),
                     "GPU readings from": r.get("gpu_source") or None,
                     "not measured": r.get("unknown_because") or None})
    out = pd.DataFrame(rows).set_index("setting")
    return out.dropna(axis=1, how="all").fillna("—")


def load_sources(t: pd.DataFrame, manifest: dict) -> str:
    """Markdown: where the load table's readings came from and at what resolution; what the server's metrics
    do not expose."""
    src = manifest.get("sampling_sources") or []
    lines = []
    for s in src:
        extra = ""
        if s.get("labels"):
            extra += " selected by " + "; ".join(f"{g}: " + ", ".join(f"{k}={v}" for k, v in lab.items())
                                                for g, lab in s["labels"].items())
        if s.get("hosts"):
            extra += f" (hosts seen: {', '.join(s['hosts'])})"
        if s.get("gpus"):
            extra += " · GPUs: " + ", ".join(f"{i}: {n}" for i, n in s["gpus"].items())
        lines.append(f"- **{s['source']}**: {s.get('origin', '')}, every {fmt.duration(s.get('resolution_s'))}{extra}")
    if len(t) and "server_kv_cache_usage_ratio_max" in t and t["server_kv_cache_usage_ratio_max"].isna().all() \
            and t["server_requests_running_max"].notna().any():
        lines.append("- KV-cache use: not in the server's metrics (its `/metrics` has no KV-cache series)")
    return "\n".join(lines)
