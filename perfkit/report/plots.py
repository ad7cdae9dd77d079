"""The one plot that stays a static image: server resources over time with each request's phases and the
server's own log events (interactive charts are in :mod:`perfkit.report.charts`)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from perfkit.core.units import BYTES, PERCENT


sns.set_theme(style="whitegrid", context="notebook")

PHASE_COLORS = {"load": "#d62728", "prefill": "#ff7f0e", "decode": "#2ca02c", "overhead": "#7f7f7f"}


EVENT_COLORS = {"runner_start": "#9467bd", "runner_ready": "#1f77b4", "model_loaded": "#1f77b4",
                "server_listening": "#8c564b", "warning": "#e377c2", "error": "#e377c2"}


def timeline(samples: pd.DataFrame, trials: pd.DataFrame, *,
             metrics: Sequence[str] = ("server_cpu_pct", "server_rss_bytes", "other_cpu_pct"),
             max_requests: int = 40, events: pd.DataFrame | None = None,
             title: str = "Server resources over time, request phases shaded, server log events as lines"):
    """Sampled metrics over time with each request's phases (load, prefill, decode) overlaid, and the
    server's own log events (runner spawned / ready, listening, warnings) as vertical lines."""
    have = [m for m in metrics if m in samples and samples[m].notna().any()]
    if samples.empty or not have:
        return None
    t0 = samples["t_ns"].min()
    fig, axes = plt.subplots(len(have), 1, figsize=(9, 2.2 * len(have)), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], have):
        s = samples[samples[m].notna()]
        unit = BYTES if m.endswith("_bytes") else PERCENT if m.endswith("_pct") else None  # units in names
        y = s[m] if unit is None else s[m].map(unit.plot)
        if unit is PERCENT:  # a share of CPU can't be negative (others' CPU is a difference of counters, noisy near 0)
            y = y.clip(lower=0)
        ax.plot((s["t_ns"] - t0) * 1e-9, y, lw=1)
        what = m.removesuffix("_bytes").removesuffix("_pct").replace("_", " ")
        ax.set_ylabel(unit.axis_label(what) if unit else what, fontsize=8)
        for _, r in trials.head(max_requests).iterrows():
            spans = []
            if pd.notna(r.get("t_loaded_ns")):
                spans.append(("load", r["t_send_ns"], r["t_loaded_ns"]))
            start = r["t_loaded_ns"] if pd.notna(r.get("t_loaded_ns")) else r["t_send_ns"]
            if pd.notna(r.get("t_first_token_ns")):
                spans.append(("prefill", start, r["t_first_token_ns"]))
                if pd.notna(r.get("t_end_ns")):
                    spans.append(("decode", r["t_first_token_ns"], r["t_end_ns"]))
            for phase, a, b in spans:
                ax.axvspan((a - t0) * 1e-9, (b - t0) * 1e-9, color=PHASE_COLORS[phase], alpha=0.25, lw=0)
        if events is not None and len(events) and "t_ns" in events:
            t_max = samples["t_ns"].max()
            for _, e in events[events["kind"].isin(list(EVENT_COLORS))].iterrows():
                if pd.notna(e["t_ns"]) and t0 <= e["t_ns"] <= t_max:
                    ax.axvline((e["t_ns"] - t0) * 1e-9, color=EVENT_COLORS[e["kind"]], lw=0.8, ls="--")
    axes[-1, 0].set_xlabel("seconds since the first sample")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.4) for k, c in PHASE_COLORS.items() if k != "overhead"]
    axes[0, 0].legend(handles, ["load", "prefill", "decode"], fontsize=8, loc="upper right")
    axes[0, 0].set_title(title)
    return fig
