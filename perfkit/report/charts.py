"""Charts: one description, two renderings. In a published report a chart is interactive (plotly.js, written
once into the results directory, never from a CDN): hover for the value, its CI and n, zoom, legends that
toggle. In a notebook it is a static PNG (matplotlib), which JupyterLab shows as it is.

A chart is displayed as a MIME bundle: :data:`MIME` carries the plotly figure (data and layout, JSON) and
its alt text, ``image/png`` the static image, ``text/plain`` the alt text. The report renderer
(:mod:`perfkit.run.publish`) turns :data:`MIME` into a chart container the page's own script draws.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from perfkit.core import fmt
from perfkit.core.units import SECONDS, Unit

MIME = "application/vnd.perfkit.chart+json"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass
class Series:
    """One named series: x labels, y values and, where a CI exists, its bounds and n (hover shows them)."""

    name: str
    x: list[Any]
    y: list[float]
    lo: list[float] | None = None
    hi: list[float] | None = None
    n: list[int] | None = None
    text: list[str] | None = None  # what hover says for each point (value [lo, hi] (n=…))


@dataclass
class Chart:
    """``kind``: ``bar`` (grouped by series), ``line`` (categories along x) or ``scatter`` (numbers along both axes:
    one point per series value, e.g. a Pareto front); ``alt``: what the chart shows, in a sentence."""

    kind: str
    title: str
    ylabel: str
    alt: str
    series: list[Series] = field(default_factory=list)
    xlabel: str = ""
    stacked: bool = False
    reference: tuple[str, float] | None = None  # a horizontal line (label, y), e.g. a bandwidth limit
    legend_title: str = ""  # what the series stand for (e.g. "clients")

    # ---- plotly -----------------------------------------------------------------------------------------
    def plotly(self) -> dict[str, Any]:
        data = []
        for i, s in enumerate(self.series):
            color = PALETTE[i % len(PALETTE)]
            tr: dict[str, Any] = {"type": "bar" if self.kind == "bar" else "scatter", "name": s.name,
                                  "x": [_wrap(str(v)).replace("\n", "<br>") for v in s.x], "y": [fmt.finite(v) for v in s.y],
                                  "marker": {"color": color},
                                  "hovertemplate": "%{text}<extra>%{fullData.name}</extra>",
                                  "text": s.text or [fmt.number(v) for v in s.y]}
            if self.kind == "line":
                tr["mode"] = "lines+markers"
            if self.kind == "scatter":
                tr.update(mode="markers", x=[fmt.finite(v) for v in s.x], marker={"color": color, "size": 11})
            if self.kind == "bar":
                tr["textposition"] = "none"
            if s.lo is not None and s.hi is not None:
                plus = [fmt.finite(h - y) if _ok(h, y) else None for y, h in zip(s.y, s.hi)]
                minus = [fmt.finite(y - lo) if _ok(lo, y) else None for y, lo in zip(s.y, s.lo)]
                tr["error_y"] = {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
                                 "visible": True}
            data.append(tr)
        layout: dict[str, Any] = {"title": {"text": self.title, "font": {"size": 15}},
                                  "yaxis": {"title": {"text": self.ylabel}, "rangemode": "tozero"},
                                  "xaxis": {"title": {"text": self.xlabel}, "automargin": True,
                                            "tickfont": {"size": 12},
                                            **({"type": "linear", "rangemode": "tozero"} if self.kind == "scatter"
                                               else {})},
                                  "barmode": "stack" if self.stacked else "group",
                                  # at the right, clear of category labels wrapped over several lines
                                  "legend": {"orientation": "v", "x": 1.01, "y": 1, "yanchor": "top",
                                             "title": {"text": self.legend_title}},
                                  "margin": {"t": 50, "r": 20, "b": 60, "l": 60}, "height": 380}
        if self.reference:
            label, y = self.reference
            layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
                                 "line": {"dash": "dot", "color": "#444"}}]
            layout["annotations"] = [{"xref": "paper", "x": 1, "y": y, "text": label, "showarrow": False,
                                      "xanchor": "right", "yanchor": "bottom"}]
        return {"data": data, "layout": layout}

    # ---- matplotlib -------------------------------------------------------------------------------------
    def png(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        labels = list(dict.fromkeys(str(v) for s in self.series for v in s.x))
        pos = {v: i for i, v in enumerate(labels)}
        width = 0.8 / max(1, len(self.series)) if self.kind == "bar" and not self.stacked else 0.8
        bottom = np.zeros(len(labels))
        for i, s in enumerate(self.series):
            xs = np.array([pos[str(v)] for v in s.x], dtype=float)
            ys = np.array([fmt.finite(v) if fmt.finite(v) is not None else np.nan for v in s.y], dtype=float)
            err = None
            if s.lo is not None and s.hi is not None:
                lo = np.array([y - lo if _ok(lo, y) else 0 for y, lo in zip(ys, s.lo)], dtype=float)
                hi = np.array([h - y if _ok(h, y) else 0 for y, h in zip(ys, s.hi)], dtype=float)
                err = np.vstack([lo, hi])
            color = PALETTE[i % len(PALETTE)]
            if self.kind == "bar":
                off = 0 if self.stacked else (i - (len(self.series) - 1) / 2) * width
                ax.bar(xs + off, ys, width, bottom=bottom[xs.astype(int)] if self.stacked else None, label=s.name,
                       color=color, yerr=err, capsize=3 if err is not None else 0)
                if self.stacked:
                    bottom[xs.astype(int)] += np.nan_to_num(ys)
            elif self.kind == "scatter":
                ax.scatter([fmt.finite(v) for v in s.x], ys, label=s.name, color=color, s=40)
            else:
                ax.errorbar(xs, ys, yerr=err, marker="o", label=s.name, color=color, capsize=3)
        if self.reference:
            ax.axhline(self.reference[1], ls=":", color="#444", label=self.reference[0])
        if self.kind == "scatter":
            ax.set_xlim(left=0)
        else:
            ax.set_xticks(range(len(labels)), [_wrap(v) for v in labels], fontsize=9)
        ax.set(title=self.title, ylabel=self.ylabel, xlabel=self.xlabel)
        ax.set_ylim(bottom=0)
        if len(self.series) > 1 or self.reference:
            ax.legend(fontsize=8, title=self.legend_title or None, title_fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        return buf.getvalue()

    def bundle(self) -> dict[str, Any]:
        return {MIME: {"figure": self.plotly(), "alt": self.alt},
                "image/png": base64.b64encode(self.png()).decode(), "text/plain": self.alt}


def _ok(a: Any, b: Any) -> bool:
    return fmt.finite(a) is not None and fmt.finite(b) is not None


def _wrap(label: str, width: int = 18) -> str:
    """A long setting label over two lines (``FLASH_ATTENTION=1, NUM_PARALLEL=4``), never rotated."""
    if len(label) <= width:
        return label
    parts = label.split(", ")
    lines, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) + 2 > width:
            lines.append(cur)
            cur = p
        else:
            cur = f"{cur}, {p}" if cur else p
    lines.append(cur)
    return "\n".join(lines)


def bars(df: pd.DataFrame, x: str, y: str, lo: str | None = None, hi: str | None = None, *, hue: str | None = None,
         n: str | None = None, title: str, alt: str, unit: Unit = SECONDS, what: str = "", xlabel: str = "",
         reference: tuple[str, float] | None = None) -> Chart:
    """Bars of ``y`` per ``x`` (grouped by ``hue``), error bars only where a CI exists. ``unit`` is what ``y``
    counts: it scales the bars (bytes as MiB, a share as percent), labels the axis (``what`` it measures, in words,
    and its symbol: "share of tokens (%)"; the unit in words without) and says each bar's value, its CI and n in
    the hover text."""
    groups = list(df.groupby(hue, sort=False)) if hue else [(None, df)]
    series = []
    for key, g in groups:
        ys = [unit.plot(v) for v in g[y]]
        los = [unit.plot(v) for v in g[lo]] if lo else None
        his = [unit.plot(v) for v in g[hi]] if hi else None
        ns = [int(v) if fmt.finite(v) is not None else None for v in g[n]] if n else None
        text = []
        for j, (_, r) in enumerate(g.iterrows()):
            has_ci = lo and hi and _ok(r[lo], r[hi]) and r[lo] != r[hi]
            v = unit.ci(r[y], r[lo], r[hi]) if has_ci else unit.text(r[y]) + " (no CI at this n)"
            text.append(v + (f" n={ns[j]}" if ns and ns[j] is not None else ""))
        series.append(Series(_key_text(key) if key is not None else y, list(g[x]), ys, los, his, ns, text))
    return Chart("bar", title, unit.axis_label(what), alt, series, xlabel=xlabel, reference=reference,
                 legend_title=hue.replace("_", " ") if hue else "")


def _key_text(key: Any) -> str:
    """A series name from a group key: 4.0 clients reads as '4'."""
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)


def show(chart: Chart) -> None:
    """Display a chart in the notebook (PNG) and, in the published report, interactively."""
    from IPython.display import display

    display(chart.bundle(), raw=True)


def show_png(fig, alt: str) -> None:
    """A matplotlib figure as a PNG with its alt text (what the report's <img> says it shows)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display({"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": alt}, raw=True)
