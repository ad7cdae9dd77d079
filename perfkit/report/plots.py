"""Plots and tables the notebooks show; every one draws from a run's recorded data."""

from __future__ import annotations

import json
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml

from perfkit.core import fmt  # noqa: F401 - notebooks format through plots.fmt

sns.set_theme(style="whitegrid", context="notebook")

PHASE_COLORS = {"load": "#d62728", "prefill": "#ff7f0e", "decode": "#2ca02c", "overhead": "#7f7f7f"}


def bar_ci(df: pd.DataFrame, x: str, y: str, lo: str, hi: str, *, hue: str | None = None, ax=None,
           ylabel: str = "", title: str = "", scale: float = 1.0):
    """Bars of a statistic with its CI as error bars (n in the tick labels when a column 'n' exists)."""
    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    d = df.copy()
    groups = list(dict.fromkeys(d[hue])) if hue else [None]
    xs = list(dict.fromkeys(d[x]))
    width = 0.8 / len(groups)
    for gi, g in enumerate(groups):
        sub = d[d[hue] == g] if hue else d
        pos = [xs.index(v) + (gi - (len(groups) - 1) / 2) * width for v in sub[x]]
        val = sub[y].to_numpy(float) * scale
        err = np.vstack([val - sub[lo].to_numpy(float) * scale, sub[hi].to_numpy(float) * scale - val])
        err = np.nan_to_num(np.clip(err, 0, None))
        ax.bar(pos, val, width=width, label=None if g is None else str(g), yerr=err, capsize=3)
    labels = xs
    if "n" in d and not hue:
        labels = [f"{v}\n(n={int(n)})" for v, n in zip(d[x], d["n"])]
    ax.set_xticks(range(len(xs)), labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if hue:
        ax.legend(title=hue, fontsize=8)
    return ax


def decomposition(by_state: pd.DataFrame, ax=None, title: str = "Where the first request's time goes (medians)"):
    """Stacked medians of load / prefill / decode / overhead per cache state."""
    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    bottom = np.zeros(len(by_state))
    for comp in ("load", "prefill", "decode", "overhead"):
        vals = by_state[f"{comp}_s"].fillna(0).clip(lower=0).to_numpy(float) * 1e3
        ax.bar(by_state["cache_state"], vals, bottom=bottom, label=comp, color=PHASE_COLORS[comp])
        bottom += vals
    ax.set_xticks(range(len(by_state)), [f"{s}\n(n={int(n)})" for s, n in zip(by_state["cache_state"], by_state["n"])])
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


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
        y = s[m] / 2**20 if m.endswith("_bytes") else s[m]
        ax.plot((s["t_ns"] - t0) * 1e-9, y, lw=1)
        ax.set_ylabel(m.replace("_bytes", " (MiB)").replace("_pct", " (%)").replace("_", " "), fontsize=8)
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


def _control_line(c: dict) -> str:
    """What perfkit could see of the server: local (pid, runners, restart command, log) or why not."""
    if not c:
        return "not recorded"
    if not c.get("local"):
        return f"{c.get('control')}: {c.get('unknown_because') or 'only the HTTP API'}"
    parts = [f"{c.get('control')} (local)"]
    if c.get("serve_pid"):
        parts.append(f"serve pid {c['serve_pid']}")
    if c.get("runners"):
        parts.append("runners: " + "; ".join(" ".join(r.get("argv", []))[:160] for r in c["runners"]))
    if c.get("restart_command"):
        parts.append(f"restart: `{' '.join(c['restart_command'])}`")
    if c.get("log"):
        parts.append(f"log: {c['log']}")
    return " · ".join(parts)


def provenance(manifest: dict) -> str:
    """Markdown: how this report's numbers were made (engine, versions, host, models, parameters)."""
    b, h = manifest.get("backend", {}), manifest.get("host", {})
    lines = ["## Provenance", "",
             f"- **Engine / backend**: {b.get('backend')} {b.get('version', '')} at {b.get('url', '')}",
             f"- **Engine command**: `{' '.join(manifest.get('engine_command') or []) or 'not started by perfkit'}`",
             f"- **Server seen as**: {_control_line(manifest.get('control') or {})}",
             f"- **Host**: {h.get('cpu')} · {h.get('cpu_cores_logical')} logical cores · "
             f"{(h.get('memory_total_bytes') or 0) / 2**30:.1f} GiB · {h.get('os')}",
             f"- **GPUs**: {', '.join(g['name'] for g in h.get('gpus', [])) or 'none'}",
             f"- **Measured**: {manifest.get('started_utc')} → {manifest.get('ended_utc')} (UTC) · git {h.get('git_commit')}",
             f"- **Sampling**: every {manifest.get('sampling_interval_s')} s; unavailable: "
             f"{json.dumps(manifest.get('sampling_unavailable') or {}) }",
             "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in (h.get("versions") or {}).items()), "",
             "| model | quantization | parameters | file bytes | sha256 / digest |", "|---|---|---|---|---|"]
    for name, f in (manifest.get("models") or {}).items():
        lines.append(f"| {name} | {f.get('quantization')} | {f.get('parameter_count')} | {f.get('size_bytes')} | "
                     f"{(f.get('digest') or '')[:16]} |")
    lines += ["", "Parameters:", "", "```yaml", yaml.safe_dump(manifest.get("params", {}), sort_keys=False).strip(), "```"]
    return "\n".join(lines)


def fmt_table(df: pd.DataFrame, columns: dict[str, str], ci: dict[str, tuple[str, str]] | None = None,
              scale: dict[str, float] | None = None, digits: int = 3) -> pd.DataFrame:
    """A display table: selected columns renamed; ``ci`` folds '<lo>, <hi>' into the value as '[lo, hi]'."""
    ci, scale = ci or {}, scale or {}
    out = pd.DataFrame()
    for col, name in columns.items():
        if col not in df:
            continue
        k = scale.get(col, 1.0)

        def f(v):
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and k == 1.0:
                return str(int(v))
            if isinstance(v, float) and v.is_integer() and col in ("n", "concurrency", "total_slots") and k == 1.0:
                return str(int(v))
            return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else (
                fmt.number(v * k, digits) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v))
        if col in ci:
            lo, hi = ci[col]
            out[name] = [f"{f(v)} [{f(a)}, {f(b)}]" if not (pd.isna(a) or pd.isna(b) or a == b) else f(v)
                         for v, a, b in zip(df[col], df[lo], df[hi])]
        else:
            out[name] = [f(v) for v in df[col]]
    return out.set_index(out.columns[0]) if len(out.columns) else out
