"""What a study notebook shows, the way a report shows it: tables that fit the page (wide ones split into
column groups, never a cell wrapped over seven lines) with a CSV of each beside the report, charts
(:mod:`perfkit.report.charts`), the result's notes first, and a short provenance with the full manifest one
click away. Text that came from a server is escaped; nothing here decides a number, it only shows one."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perfkit.analysis.requests import error_summary
from perfkit.core import fmt
from perfkit.core.units import Unit
from perfkit.report import charts

LONG_TABLE_ROWS = 30  # a table longer than this shows SHOWN_ROWS rows, the rest folded
SHOWN_ROWS = 20
MAX_COLUMNS = 7  # more than this and a table is split into column groups (each repeats the row labels)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "table"


class Page:
    """The report page of one study in one run: ``Page(run_dir, "cold_start")`` in a notebook."""

    def __init__(self, run_dir: str | Path, study: str):
        self.run_dir, self.study = Path(run_dir), study
        self._names: set[str] = set()

    def _csv(self, df: pd.DataFrame, name: str) -> str | None:
        """Write the table as CSV beside the run's reports; its link relative to ``<run>/<study>.html``."""
        slug = _slug(name)
        while slug in self._names:
            slug += "-2"
        self._names.add(slug)
        rel = Path("tables") / self.study / f"{slug}.csv"
        try:
            (self.run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(self.run_dir / rel)
        except OSError:
            return None
        return rel.as_posix()

    def table(self, df: pd.DataFrame, name: str, caption: str = "") -> None:
        """Show ``df`` (escaped) in column groups that fit the page, with a link to its CSV."""
        from IPython.display import HTML, Markdown, display

        if df is None or len(df) == 0:
            display(Markdown(f"*{name}: nothing recorded.*"))
            return
        link = self._csv(df, name)
        cols = list(df.columns)
        groups = [cols[i:i + MAX_COLUMNS] for i in range(0, len(cols), MAX_COLUMNS)] or [[]]
        parts = [f'<div class="perfkit-table" data-name="{html.escape(name)}">']
        if caption:
            parts.append(f'<p class="caption">{html.escape(caption)}</p>')
        # A plain row number says nothing to a reader; a long table shows its first rows, the rest one click away.
        index = not isinstance(df.index, pd.RangeIndex)
        for k, g in enumerate(groups):
            if len(groups) > 1:
                parts.append(f'<p class="colgroup">columns {k * MAX_COLUMNS + 1}–{k * MAX_COLUMNS + len(g)} of '
                             f"{len(cols)}</p>")
            if len(df) > LONG_TABLE_ROWS:
                head, rest = df[g].iloc[:SHOWN_ROWS], df[g].iloc[SHOWN_ROWS:]
                parts.append(head.to_html(escape=True, na_rep="—", classes="dataframe perfkit", index=index))
                parts.append(f"<details><summary>the other {len(rest)} of {len(df)} rows</summary>"
                             + rest.to_html(escape=True, na_rep="—", classes="dataframe perfkit", index=index)
                             + "</details>")
            else:
                parts.append(df[g].to_html(escape=True, na_rep="—", classes="dataframe perfkit", index=index))
        if link:
            parts.append(f'<p class="download"><a href="{html.escape(link)}" download>download this table (CSV)</a></p>')
        parts.append("</div>")
        display(HTML("".join(parts)))

    def figures(self, figures: Any, name: str = "figures") -> None:
        """The figures a study stands by, one row each with the anchor its answer links to, and a CSV."""
        from IPython.display import HTML, Markdown, display

        if not len(figures):
            display(Markdown(f"*{name}: nothing recorded.*"))
            return
        link = self._csv(figures.table(), name)
        rows = "".join(f'<tr id="{f.anchor}"><th>{html.escape(f.label)}</th><td>{html.escape(f.text())}</td>'
                       f"<td>{html.escape(f.m.method)}</td></tr>" for f in figures.values())
        parts = [f'<div class="perfkit-table" data-name="{html.escape(name)}"><table class="dataframe perfkit">'
                 "<thead><tr><th>figure</th><th>value</th><th>how</th></tr></thead>"
                 f"<tbody>{rows}</tbody></table>"]
        if link:
            parts.append(f'<p class="download"><a href="{html.escape(link)}" download>download this table (CSV)</a></p>')
        parts.append("</div>")
        display(HTML("".join(parts)))

    def chart(self, chart: charts.Chart) -> None:
        charts.show(chart)

    def notes(self, result: Any) -> None:
        """The result's notes (a replay with the run's own parameters, replicates, a resumed run) first."""
        from IPython.display import Markdown, display

        for n in getattr(result, "notes", []) or []:
            display(Markdown(f"> ℹ️ {html.escape(n)}"))

    def provenance(self, manifest: dict, models: list[str] | None = None) -> None:
        from IPython.display import Markdown, display

        display(Markdown(provenance(manifest, self.study, models)))


def _control_line(c: dict) -> str:
    """What perfkit could see of the server: local (pid, runners, restart command, log) or why not."""
    if not c:
        return "not recorded"
    if not c.get("local"):
        return f"{c.get('control')}: {c.get('unknown_because') or 'only the HTTP API'}"
    parts = [f"{c.get('control')} (local)"]
    if c.get("serve_pid"):
        parts.append(f"serve pid {c['serve_pid']}")
    if c.get("restart_command"):
        parts.append(f"restart: `{' '.join(c['restart_command'])}`")
    if c.get("log"):
        parts.append(f"log: {c['log']}")
    return " · ".join(parts)


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "—"
    if isinstance(v, float):
        return fmt.number(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v) or "none"
    if isinstance(v, dict):
        return "; ".join(f"{k}={_value(x)}" for k, x in v.items()) or "none"
    return str(v)


def _telemetry_lines(manifest: dict) -> list[str]:
    """One line per telemetry source: what it is, where it reads, at what resolution, what it saw."""
    out = []
    for s in manifest.get("sampling_sources") or []:
        if s.get("source") in ("gpu", "system"):
            continue
        what = {"prometheus": "Prometheus", "scrape": "scraped exporter", "engine": "the engine's own metrics"}.get(
            s.get("source"), str(s.get("source")))
        sel = "; ".join(f"{g} {{{', '.join(f'{k}={v}' for k, v in lab.items())}}}"
                        for g, lab in (s.get("labels") or {}).items())
        gpus = ", ".join(f"GPU {i}: {n}" for i, n in (s.get("gpus") or {}).items())
        out.append(f"- **Telemetry** ({html.escape(what)}): {html.escape(str(s.get('origin', '')))}"
                   + (f" selecting {html.escape(sel)}" if sel else "")
                   + f", one reading every {fmt.duration(s.get('resolution_s'))}"
                   + (f"; hosts: {html.escape(', '.join(s['hosts']))}" if s.get("hosts") else "")
                   + (f"; {html.escape(gpus)}" if gpus else ""))
    return out


def provenance(manifest: dict, study: str, models: list[str] | None = None) -> str:
    """Markdown: how this study's numbers were made, short (its own parameters, the models it used, numbers
    formatted); the whole manifest is linked, not pasted."""
    b, h = manifest.get("backend") or {}, manifest.get("host") or {}
    params = manifest.get("params") or {}
    section = (params.get("studies") or {}).get(study) or {}
    used = models if models is not None else [m for m in (manifest.get("models") or {})]
    gpus = ", ".join(g.get("name", "?") for g in h.get("gpus") or [] if isinstance(g, dict)) or "none"
    sampled = manifest.get("sampling_unavailable") or {}
    lines = ["## Provenance", "",
             f"- **Server**: {html.escape(str(b.get('backend', '?')))} {html.escape(str(b.get('version', '')))}"
             + (f" {html.escape(str(b['served_as']))}" if b.get("served_as") else "") + " · "
             f"seen as {html.escape(_control_line(manifest.get('control') or {}))}",
             f"- **Host**: {html.escape(str(h.get('cpu', '?')))}, {h.get('cpu_cores_logical', '?')} logical cores, "
             f"{fmt.size(h.get('memory_total_bytes'))} memory, GPUs: {html.escape(gpus)}",
             f"- **Measured**: {manifest.get('started_utc', '?')} → {manifest.get('ended_utc', '?')} (UTC); perfkit "
             f"{manifest.get('perfkit_version', '?')}, git {h.get('git_commit') or '?'}"
             + (f"; replicate {manifest['replicate']}" if manifest.get("replicate", 1) != 1 else ""),
             f"- **Sampling**: every {_value(manifest.get('sampling_interval_s'))} s"
             + (f"; not sampled: {html.escape('; '.join(f'{error_summary(k)}: {error_summary(v)}' for k, v in sampled.items()))}"
                if sampled else ""),
             *_telemetry_lines(manifest),
             "- **This study's parameters**: " + (html.escape("; ".join(f"{k} = {_value(v)}" for k, v in section.items()))
                                                   or "defaults"),
             f"- **Server settings**: {html.escape(_value((params.get('backend') or {}).get('settings') or {}))}",
             ""]
    facts = manifest.get("models") or {}
    rows = [(m, facts.get(m) or {}) for m in used if m in facts]
    if rows:
        lines += ["| model | quantization | parameters | file | digest |", "|---|---|---|---|---|"]
        for m, f in rows:
            lines.append(f"| {html.escape(m)} | {html.escape(str(f.get('quantization') or '—'))} | "
                         f"{fmt.count(f.get('parameter_count'))} | {fmt.size(f.get('size_bytes'))} | "
                         f"{html.escape(str(f.get('digest') or '')[:16]) or '—'} |")
        lines.append("")
    lines.append(f"The whole manifest (engine command, every version, the full parameters): "
                 f"[{study}/manifest.json]({study}/manifest.json).")
    return "\n".join(lines)


def format_table(df: pd.DataFrame, columns: dict[str, str], ci: dict[str, tuple[str, str]] | None = None,
                 units: dict[str, Unit] | None = None, digits: int = 3) -> pd.DataFrame:
    """A display table: selected columns renamed; ``ci`` folds '<lo>, <hi>' into the value as '[lo, hi]';
    a column given a unit in ``units`` reads in it ('412 ms [398, 431]', '473 MiB', '45%'), others as numbers."""
    ci, units = ci or {}, units or {}
    out = pd.DataFrame()
    for col, name in columns.items():
        if col not in df:
            continue
        unit = units.get(col)
        if unit is not None:
            lo, hi = ci.get(col, (None, None))
            bounds = zip(df[lo], df[hi]) if lo else ((None, None) for _ in range(len(df)))
            out[name] = [unit.ci(v, a, b, digits) for v, (a, b) in zip(df[col], bounds)]
            continue

        def f(v):
            if isinstance(v, (bool, np.bool_)):
                return "yes" if v else "no"  # never "True" in a table a person reads
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                return str(int(v))
            if isinstance(v, float) and v.is_integer() and col in ("n", "concurrency", "total_slots"):
                return str(int(v))
            return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else (
                fmt.number(v, digits) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v))
        if col in ci:
            lo, hi = ci[col]
            out[name] = [f"{f(v)} [{f(a)}, {f(b)}]" if not (pd.isna(a) or pd.isna(b) or a == b) else f(v)
                         for v, a, b in zip(df[col], df[lo], df[hi])]
        else:
            out[name] = [f(v) for v in df[col]]
    return out.set_index(out.columns[0]) if len(out.columns) else out
