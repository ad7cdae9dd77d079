"""The report pages as files: one policy, no CDN, relative assets, navigation, contents, charts as data, tables
that fit with their CSV, escaped server text, a progress line that also reaches a log file."""

import io
import json
import re
from pathlib import Path

import nbformat
import pandas as pd

from perfkit.report import charts
from perfkit.report.page import MAX_COLUMNS, Page
from perfkit.run import publish, site


def _executed(tmp_path: Path, outputs: list[dict], md: str = "# Title\n## Part one\ntext") -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [nbformat.v4.new_output("display_data", data=o) for o in outputs]
    nb.cells = [nbformat.v4.new_markdown_cell(md), code]
    p = tmp_path / "nb.ipynb"
    nbformat.write(nb, p)
    return p


def test_a_report_page_is_self_contained_and_strict(tmp_path):
    chart = charts.bars(pd.DataFrame({"x": ["a", "b"], "y": [1.0, 2.0], "lo": [0.9, 1.8], "hi": [1.1, 2.3],
                                      "n": [8, 8]}), "x", "y", "lo", "hi", n="n", title="T",
                        alt="two bars with their CIs")
    server_text = "<html><head><title>504 Gateway Time-out</title></head></html>"
    nb = _executed(tmp_path, [chart.bundle(), {"text/markdown": server_text.replace("<", "&lt;"),
                                               "text/plain": "x"}])
    out = publish.render(nb, tmp_path / "r.html", title="Cold start — run-1", nav='<a href="../index.html">all</a>')
    page = out.read_text()
    assert "<title>Cold start — run-1</title>" in page and "Content-Security-Policy" in page
    assert "script-src 'self'" in page and "http://" not in page and "https://" not in page  # no CDN, nothing remote
    assert re.findall(r"<script(?![^>]*(src=|type=\"application/json\"))", page) == []  # no inline script
    assert 'src="../assets/plotly.min.js"' in page and 'href="../assets/perfkit.css"' in page
    assert 'class="plotly-chart"' in page and 'aria-label="two bars with their CIs"' in page
    data = json.loads(re.search(r'<script[^>]*id="chart-1-data"[^>]*>(.*?)</script>', page).group(1))
    assert data["data"][0]["error_y"]["array"] == [0.10000000000000009, 0.2999999999999998]
    assert "<title>504" not in page  # a server's HTML is text, never markup
    assert 'href="#Part-one"' in page  # contents


def test_images_get_alt_text(tmp_path):
    png = charts.Chart("bar", "t", "y", "alt", [charts.Series("s", ["a"], [1.0])]).bundle()["image/png"]
    nb = _executed(tmp_path, [{"image/png": png, "text/plain": "<Figure size 640x480 with 1 Axes>"}],
                   md="# T\n## Server resources over time")
    page = publish.render(nb, tmp_path / "r.html").read_text()
    assert 'alt="plot: Server resources over time"' in page


def test_tables_fit_the_page_and_come_as_csv(tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()
    df = pd.DataFrame({f"c{i}": [i, i + 1] for i in range(MAX_COLUMNS + 3)}, index=["a", "b"])
    df["server said"] = ["<b>boom</b>", "ok"]
    shown = []
    import IPython.display as d

    orig = d.display
    d.display = lambda *a, **k: shown.extend(a)
    try:
        Page(tmp_path, "cold_start").table(df, "Latency by state")
    finally:
        d.display = orig
    html = shown[0].data
    assert html.count("<table") == 2 and "columns 1–7 of 11" in html
    assert "&lt;b&gt;boom&lt;/b&gt;" in html and "<b>boom</b>" not in html
    csv = tmp_path / "tables" / "cold_start" / "latency-by-state.csv"
    assert csv.exists() and 'href="tables/cold_start/latency-by-state.csv"' in html
    assert pd.read_csv(csv, index_col=0).shape == df.shape


def test_assets_are_written_once_and_the_index_needs_nothing_else(tmp_path):
    site.write_index(tmp_path)
    a = tmp_path / "assets"
    assert (a / "perfkit.css").exists() and (a / "perfkit.js").exists() and (a / "plotly.min.js").stat().st_size > 1e6
    mtime = (a / "plotly.min.js").stat().st_mtime_ns
    site.write_index(tmp_path)
    assert (a / "plotly.min.js").stat().st_mtime_ns == mtime
    index = (tmp_path / "index.html").read_text()
    assert "<script>" not in index and 'src="assets/perfkit.js"' in index


def test_the_progress_line_reaches_a_log_file(tmp_path):
    from perfkit.measure.progress import Progress
    from perfkit.run.progress import Watcher

    out = io.StringIO()  # not a terminal: whole lines, not \r
    w = Watcher("cold_start", tmp_path, out)
    with Progress(tmp_path, "cache states", 30) as p:
        p.update(12, "warm")
        p._write(force=True)
        w.tick()
    line = out.getvalue()
    assert line.endswith("\n") and "[cold_start] cache states 12/30 (warm)" in line and "elapsed" in line
    assert "left in this phase" in line


def test_progress_shows_the_whole_runs_time_left_from_the_last_run_of_the_same_parameters(tmp_path):
    import types

    from perfkit.measure.progress import Progress
    from perfkit.run.estimate import RunClock, expected_s
    from perfkit.run.progress import Watcher
    from perfkit.run.rundir import write_run

    results = tmp_path / "results"
    for name, params, wall in (("20261201-000000-demo-a", "demo", 80.0), ("20261202-000000-other-b", "other", 5.0)):
        (results / name).mkdir(parents=True)
        write_run(results / name, {"params_name": params, "studies": {"cold_start": {"status": "done", "wall_s": wall},
                                                                         "fleet": {"status": "failed", "wall_s": 9}}})
    assert expected_s(results, "demo", "cold_start", None) == 80.0  # the same parameters', not the newer other's
    assert expected_s(results, "demo", "fleet", types.SimpleNamespace(budget_s=40)) == 40.0  # failed: the budget
    assert expected_s(results, "demo", "workload", None) is None
    clock = RunClock({"cold_start": 80.0, "fleet": 40.0}, ["cold_start", "fleet"])
    clock.start("cold_start")
    out = io.StringIO()
    w = Watcher("cold_start", tmp_path, out, run_left_s=lambda e: clock.left_s("cold_start", 30.0))
    with Progress(tmp_path, "cache states", 30) as p:
        p.update(12, "warm")
        p._write(force=True)
        w.tick()
    assert "the whole run: about 1.50 min left" in out.getvalue() or "the whole run: about 90" in out.getvalue(), \
        out.getvalue()
    assert RunClock({"a": 1.0, "b": None}, ["a", "b"]).left_s("a", 0) is None  # unknown: not shown


def test_a_pages_navigation_is_refreshed_when_later_studies_are_rendered(tmp_path):
    """The first study's page is rendered before the second exists; once the second is done, the first page's
    header links to it (it said "none yet" before)."""
    from perfkit.run import site
    from perfkit.run.publish import page
    from perfkit.run.rundir import write_run

    run = tmp_path / "20261205-000000-x-abcdef"
    run.mkdir()
    info = {"run_id": run.name, "studies": {"cold_start": {"status": "done", "html": "cold_start.html"}}}
    write_run(run, info)
    (run / "cold_start.html").write_text(page("Cold start", "<p>body</p>", nav=site.report_nav(run, "cold_start")))
    assert "model_size.html" not in (run / "cold_start.html").read_text()
    info["studies"]["model_size"] = {"status": "done", "html": "model_size.html"}
    write_run(run, info)
    (run / "model_size.html").write_text(page("Model size", "<p>b</p>", nav=site.report_nav(run, "model_size")))
    assert site.refresh_navs(run)
    text = (run / "cold_start.html").read_text()
    assert 'href="model_size.html"' in text and "<p>body</p>" in text and text.count('<header class="site">') == 1


def test_a_long_table_folds_its_rest_and_shows_no_row_numbers_or_booleans(tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    from perfkit.report.page import SHOWN_ROWS, format_table

    InteractiveShell.instance()
    df = format_table(pd.DataFrame({"server": [f"s{i}" for i in range(45)], "n": range(45),
                                    "matches": [True, False] * 22 + [True]}),
                      {"server": "server", "n": "n", "matches": "matches"}).reset_index()
    shown = []
    import IPython.display as d

    orig = d.display
    d.display = lambda *a, **k: shown.extend(a)
    try:
        Page(tmp_path, "fleet").table(df, "Balance")
    finally:
        d.display = orig
    html = shown[0].data
    assert "<details><summary>the other 25 of 45 rows</summary>" in html and SHOWN_ROWS == 20
    assert "<th>0</th>" not in html and "True" not in html and "<td>yes</td>" in html
