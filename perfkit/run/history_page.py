"""``results/history.html``: each headline figure over every run of the results directory, with its CI, the runs
where it changed (the comparison's test, FDR-adjusted along the figure's course) and what differed in the
manifests there (see :mod:`perfkit.compare.history`)."""

from __future__ import annotations

import html
from pathlib import Path

from perfkit.compare import history
from perfkit.report.charts import Chart, Series
from perfkit.run.publish import chart_html, page
from perfkit.run.site import ASSETS, write_assets


def _chart(n: int, c: history.Course) -> str:
    xs = [r.name for r, _ in c.points]
    unit = c.points[-1][1].unit
    # Plotted in the unit's axis scale (bytes as MiB, a share as percent); the hover text says each in its own.
    ys = [unit.plot(f.estimate.value) for _, f in c.points]
    text = [f"{r.name}: {f.text()}" for r, f in c.points]
    chart = Chart("line", (c.headline[:1].upper() + c.headline[1:] + ": " if c.headline else "") + c.label,
                  unit.axis_label(c.label), f"{c.label} in each of {len(xs)} runs, oldest first, with 95% CIs"
                  + (f"; changed at {', '.join(ch.run_after for ch in c.changes)}" if c.changes else "; no change called"),
                  [Series(c.label, xs, ys, [unit.plot(f.estimate.lo) for _, f in c.points],
                          [unit.plot(f.estimate.hi) for _, f in c.points], [f.estimate.n for _, f in c.points], text)],
                  xlabel="run")
    fig = chart.plotly()
    shapes, notes = [], []
    for ch in c.changes:
        i = xs.index(ch.run_after)
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": i - 0.5, "x1": i - 0.5, "y0": 0, "y1": 1,
                       "line": {"dash": "dash", "color": "#d62728"}})
        notes.append({"xref": "x", "yref": "paper", "x": i - 0.5, "y": 1, "showarrow": False, "yanchor": "bottom",
                      "text": f"{ch.row.verdict} {ch.row.change_text.split(' [')[0]}", "font": {"color": "#d62728"}})
    fig["layout"]["shapes"], fig["layout"]["annotations"] = shapes, notes
    return chart_html(n, {"figure": fig, "alt": chart.alt})["text/html"]


def _changes_table(c: history.Course) -> str:
    apart = "".join(f"<li>{html.escape(a)} → {html.escape(b)}: not comparable, the workload differs ({html.escape(why)})"
                    "</li>" for a, b, why in c.not_comparable)
    apart = f"<ul>{apart}</ul>" if apart else ""
    if not c.changes:
        pairs = len(c.points) - 1 - len(c.not_comparable)
        return (f"<p>No change called between the {pairs} comparable pair(s) of consecutive runs (the comparison's "
                "test, the false-discovery rate held along the course).</p>" + apart)
    rows = "".join(
        f"<tr><td>{html.escape(ch.run_before)} → {html.escape(ch.run_after)}</td>"
        f"<td>{html.escape(ch.row.before)} → {html.escape(ch.row.after)}</td>"
        f"<td>{html.escape(ch.row.change_text)}</td><td class=\"verdict-{ch.row.verdict.split()[0]}\">"
        f"{html.escape(ch.row.verdict)}</td>"
        f"<td>{html.escape('; '.join(ch.differences) or 'nothing in the manifests (same settings, models, engine, host)')}</td></tr>"
        for ch in c.changes)
    return ('<table class="dataframe perfkit"><thead><tr><th>runs</th><th>figure</th><th>change</th><th>verdict</th>'
            f"<th>what differed</th></tr></thead><tbody>{rows}</tbody></table>" + apart)


def write_history(results_dir: str | Path, *, db: bool = True) -> Path:
    """Write ``history.html`` (and, with ``db``, rebuild ``history.duckdb``) for ``results_dir``; its path."""
    results_dir = Path(results_dir)
    write_assets(results_dir)
    runs = history.runs_in(results_dir)
    if db:
        history.build(results_dir)
    courses = [c for c in history.courses(runs) if len(c.points) >= 2]
    parts = ['<p><a href="index.html">← all runs</a></p><h1>History</h1>',
             f"<p>{len(runs)} run(s) in this results directory. Each headline figure measured in at least two runs, "
             "oldest first, with its 95% CI; a dashed line marks a run where the figure changed — the comparison's "
             "own test and minimum effect between consecutive runs, the false-discovery rate held over the figure's "
             "course — with what differed in the manifests there. The same data is in <code>history.duckdb</code> "
             "(tables runs, figures, facts): <code>perfkit history --sql \"…\"</code> queries it.</p>"]
    if not courses:
        parts.append("<p>No headline figure was measured in two runs yet: run the same parameters again (or after a "
                     "change) to see its course.</p>")
    for n, c in enumerate(courses):
        title = (c.headline[:1].upper() + c.headline[1:] + ": " if c.headline else "") + c.label
        parts.append(f'<h2 id="{html.escape(c.key.replace("/", "-"))}">{html.escape(title)} '
                     f'<small>({html.escape(c.key.split("/", 1)[0].replace("_", " "))})</small></h2>')
        parts.append(_chart(n, c))
        parts.append(_changes_table(c))
    out = results_dir / "history.html"
    out.write_text(page("perfkit history", "".join(parts), assets=ASSETS))
    return out

