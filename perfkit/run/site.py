"""The results site's front page, ``results/index.html``: every run, newest first, with its studies' status,
links to their reports and its headline figures (read from each study's figures file, the same objects its
report and ``perfkit compare`` show); the ``perfkit compare`` command for two runs and links to comparisons
already made."""

from __future__ import annotations

import html
import json
import os
import secrets
import shlex
from pathlib import Path

from perfkit.analysis.figures import FILE_NAME, FigureSet
from perfkit.analysis.verdicts import IMPROVED, NO_CHANGE, WORSE
from perfkit.compare import before_after
from perfkit.core.errors import PerfkitError
from perfkit.run.publish import page
from perfkit.run.rundir import read_run

MAX_HEADLINES = 8


def headlines(run_dir: str | Path) -> list[tuple[str, str]]:
    """('headline — study', 'value (conditions, n=…)') of each study's headline figures, in study order: each
    named with the study it comes from and its conditions in words ('4 clients', not '4')."""
    out = []
    for d in sorted(Path(run_dir).iterdir()) if Path(run_dir).is_dir() else []:
        f = d / FILE_NAME
        if not f.is_file():
            continue
        try:
            figs = FigureSet.read(f)
        except (OSError, ValueError, KeyError, TypeError):
            out.append((d.name, "figures file unreadable"))
            continue
        for fig in figs.headlines():
            cond = fig.conditions
            out.append((f"{fig.headline} — {d.name.replace('_', ' ')}",
                        f"{fig.unit.text(fig.value)} ({cond + ', ' if cond else ''}n={fig.n})"))
    return out[:MAX_HEADLINES]


def index_cell(run_dir: Path) -> str:
    """HTML for one run's headline figures in the results index (or why there are none)."""
    try:
        h = headlines(run_dir)
    except Exception as e:  # noqa: BLE001 - the index lists every run, even one this cannot read
        return f'<span class="muted">figures unavailable ({html.escape(type(e).__name__)}: {html.escape(str(e))})</span>'
    if not h:
        return '<span class="muted">no figures yet</span>'
    return "<br>".join(f"{html.escape(k)}: <b>{html.escape(v)}</b>" for k, v in h)


def before_after_section(runs: list[Path]) -> str:
    """The newest run's before/after table (its studies' starting points against the fixes they found), or ""."""
    for run_dir in runs:
        try:
            rows = before_after.in_run(run_dir)
        except Exception:  # noqa: BLE001 - an unreadable run has no table; the runs table says why
            continue
        if rows:
            return (f"<h2>Before and after, in the newest run ({html.escape(run_dir.name)})</h2><p>Where a server "
                    "starts (no warmup, the first setting tried) against the fix the run's studies found (the fastest "
                    "warmup, the leading setting), measured in the same run.</p>"
                    + before_after.table_html(rows))
    return ""


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "run.json").exists()


def recent_runs(results_dir: str | Path) -> list[Path]:
    """Run directories under ``results_dir``, oldest first (run ids start with their creation time)."""
    d = Path(results_dir)
    return sorted(p for p in d.iterdir() if is_run(p)) if d.is_dir() else []


def pick(run_a: str | Path | None, run_b: str | Path | None, results_dir: str | Path = "results") -> tuple[Path, Path]:
    """The two runs to compare: as given, or, when both are empty, the two most recent in ``results_dir``
    (older as A, newer as B)."""
    if run_a and run_b:
        return Path(run_a), Path(run_b)
    if run_a or run_b:
        raise PerfkitError("give both runs to compare (A, the before, and B, the after), or neither for the two "
                           f"most recent runs in {results_dir}")
    runs = recent_runs(results_dir)
    if len(runs) < 2:
        raise PerfkitError(f"{results_dir}: {len(runs)} run(s) there; comparing needs two (run `perfkit run` twice)")
    return runs[-2], runs[-1]


def default_out(run_a: str | Path, run_b: str | Path) -> Path:
    """``<results>/compare-<A>-vs-<B>/`` beside run A, so the results index links it."""
    a, b = Path(run_a), Path(run_b)
    return a.resolve().parent / f"compare-{a.resolve().name}-vs-{b.resolve().name}"


def index_section(results_dir: Path, shown_as: str | None = None, recent: int = 4) -> str:
    """HTML for the results index: pick two runs and copy the ``perfkit compare`` command (no server needed);
    the commands for every pair of the ``recent`` newest runs; links to comparisons already made."""
    runs = recent_runs(results_dir)
    base = shown_as if shown_as is not None else str(results_dir)

    def cmd(a: Path, b: Path) -> str:
        return f"perfkit compare {shlex.quote(f'{base}/{a.name}')} {shlex.quote(f'{base}/{b.name}')}"

    parts = ["<h2>Compare two runs</h2>"]
    if len(runs) >= 2:
        opts = "".join(f'<option value="{html.escape(shlex.quote(f"{base}/{p.name}"))}">{html.escape(p.name)}</option>'
                       for p in reversed(runs))
        parts.append(
            "<p>Before (A) <select id=\"cmp-a\">" + opts + "</select> after (B) "
            f"<select id=\"cmp-b\">{opts}</select></p><pre id=\"cmp-cmd\">{html.escape(cmd(runs[-2], runs[-1]))}</pre>")
        pairs = [(a, b) for i, a in enumerate(runs[-recent:]) for b in runs[-recent:][i + 1:]]
        parts.append("<p>Recent pairs (older run first):</p><pre>"
                     + "\n".join(html.escape(cmd(a, b)) for a, b in reversed(pairs)) + "</pre>")
    else:
        parts.append("<p>Two runs are needed to compare; this directory has "
                     f"{len(runs)}.</p>")
    done = sorted((p for p in results_dir.iterdir() if (p / "comparison.json").is_file()), reverse=True) \
        if results_dir.is_dir() else []
    if done:
        items = []
        for p in done:
            try:
                d = json.loads((p / "comparison.json").read_text())
                c = d.get("counts") or {}
                what = (f"{Path(d['run_a']).name} → {Path(d['run_b']).name}: {c.get(IMPROVED, 0)} improved, "
                        f"{c.get(WORSE, 0)} worse, {c.get(NO_CHANGE, 0)} no detectable change")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                what = "comparison.json unreadable"
            link = (f'<a href="{html.escape(p.name)}/comparison.html">{html.escape(p.name)}</a>'
                    if (p / "comparison.html").exists() else html.escape(p.name))
            items.append(f"<li>{link} — {html.escape(what)}</li>")
        parts.append(f"<p>Comparisons already made:</p><ul>{''.join(items)}</ul>")
    return "\n".join(parts)


ASSETS = "assets"


def write_assets(results_dir: Path) -> Path:
    """The site's stylesheet and scripts (and plotly.js, from the plotly package), written once into the
    results directory, refreshed when they changed: every page links them relatively and works offline."""
    from importlib import resources

    out = Path(results_dir) / ASSETS
    out.mkdir(parents=True, exist_ok=True)
    sources = {name: resources.files("perfkit.report") / "assets" / name for name in ("perfkit.css", "perfkit.js", "favicon.svg")}
    try:
        import plotly

        sources["plotly.min.js"] = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    except ImportError:  # charts then stay static images; nothing else depends on it
        pass
    for name, src in sources.items():
        dst = out / name
        data = Path(str(src)).read_bytes()
        if not dst.exists() or dst.stat().st_size != len(data) or (name != "plotly.min.js" and dst.read_bytes() != data):
            tmp = dst.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(dst)
    return out


def _links(pairs: list[tuple[str, str]]) -> str:
    return "".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in pairs)


def report_nav(run_dir: Path, study: str | None) -> str:
    """The header of a run's report: back to every run, this run's other reports, its data and logs, and the
    comparisons it is part of (all relative links from ``<run>/<study>.html``)."""
    run_dir = Path(run_dir)
    try:
        info = read_run(run_dir, live=False)
    except PerfkitError:
        info = {}
    reports = [(s.replace("_", " "), f"{s}.html") for s, st in (info.get("studies") or {}).items()
               if isinstance(st, dict) and st.get("html")]
    data = [("parameters", "params.yaml"), ("run.json", "run.json")]
    if study:
        for name, rel in (("trials", "trials.jsonl"), ("trials (parquet)", "trials.parquet"), ("samples", "samples.jsonl"),
                          ("events", "events.jsonl"), ("figures", "figures.json"), ("manifest", "manifest.json"),
                          ("server log", "server.log")):
            if (run_dir / study / rel).exists():
                data.append((name, f"{study}/{rel}"))
        if (run_dir / "notebooks" / f"{study}.ipynb").exists():
            data.append(("executed notebook", f"notebooks/{study}.ipynb"))
        logs = sorted((run_dir / "logs").glob(f"{study}*")) if (run_dir / "logs").is_dir() else []
        data += [(p.name, f"logs/{p.name}") for p in logs]
    comps = sorted(p for p in run_dir.parent.glob("compare-*") if run_dir.name in p.name
                   and (p / "comparison.html").exists()) if run_dir.parent.is_dir() else []
    rows = [f'<div class="row"><a href="../index.html">← all runs</a> <span class="label">run</span>'
            f"<b>{html.escape(run_dir.name)}</b></div>",
            f'<div class="row"><span class="label">reports</span>{_links(reports) or "none yet"}</div>',
            f'<div class="row"><span class="label">data</span>{_links(data)}</div>']
    if comps:
        rows.append(f'<div class="row"><span class="label">comparisons</span>'
                    f'{_links([(p.name.removeprefix("compare-"), f"../{p.name}/comparison.html") for p in comps])}</div>')
    return "".join(rows)


def refresh_navs(run_dir: Path) -> list[Path]:
    """Rewrite the navigation of every report page the run has, so a page rendered before its later studies
    links to them too (a header frozen at render time said "none yet" once the run was done)."""
    import re

    run_dir = Path(run_dir)
    try:
        info = read_run(run_dir, live=False)
    except PerfkitError:
        return []
    out = []
    for study, st in (info.get("studies") or {}).items():
        page_path = run_dir / f"{study}.html"
        if not (isinstance(st, dict) and st.get("html") and page_path.exists()):
            continue
        text = page_path.read_text()
        new = re.sub(r'(<header class="site">).*?(</header>)', lambda m: m.group(1) + report_nav(run_dir, study)
                     + m.group(2), text, count=1, flags=re.S)
        if new != text:
            tmp = page_path.with_name(page_path.name + ".tmp")
            tmp.write_text(new)
            tmp.replace(page_path)
            out.append(page_path)
    return out


def compare_nav(run_a: Path, run_b: Path) -> str:
    """The header of a comparison page (``<results>/compare-A-vs-B/comparison.html``)."""
    rows = ['<div class="row"><a href="../index.html">← all runs</a></div>']
    for who, r in (("A (before)", Path(run_a)), ("B (after)", Path(run_b))):
        try:
            info = read_run(r, live=False)
        except PerfkitError:
            info = {}
        reps = [(s.replace("_", " "), f"../{r.name}/{st['html']}") for s, st in (info.get("studies") or {}).items()
                if isinstance(st, dict) and st.get("html")]
        rows.append(f'<div class="row"><span class="label">{who}</span><b>{html.escape(r.name)}</b> '
                    f"{_links(reps)}</div>")
    rows.append('<div class="row"><span class="label">data</span><a href="comparison.json">comparison.json</a>'
                '<a href="compare.ipynb">executed notebook</a></div>')
    return "".join(rows)


def write_index(results_dir: Path) -> Path:
    """``results/index.html``: every run, newest first, with its studies' status, reports and headline
    figures; the ``perfkit compare`` command for two runs and links to comparisons already made."""
    results_dir.mkdir(parents=True, exist_ok=True)
    write_assets(results_dir)
    rows = []
    runs = sorted((p for p in results_dir.iterdir() if (p / "run.json").exists()), reverse=True)
    for run_dir in runs:
        try:
            info = read_run(run_dir)
        except PerfkitError:
            info = {"studies": {"run.json": {"status": "unreadable"}}}
        cells = []
        for study, st in info.get("studies", {}).items():
            label = html.escape(study.replace("_", " "))
            if st.get("html") and (run_dir / st["html"]).exists():
                link = f'<a href="{html.escape(run_dir.name)}/{html.escape(st["html"])}">{label}</a>'
            else:
                link = label
            extra = f' ({st["wall_s"]:.0f} s)' if st.get("wall_s") else ""
            if st.get("why"):
                extra += f": {st['why']}"
            status = str(st.get("status", "?"))
            cls = status.split()[0] if status.split() else "unknown"
            cells.append(f'<li class="{html.escape(cls)}">{link} — {html.escape(status)}{html.escape(extra)}</li>')
        repeat = f" ×{info['repeat']}" if int(info.get("repeat") or 1) > 1 else ""
        rows.append(f"<tr><td>{html.escape(run_dir.name)}</td><td>{html.escape(info.get('params_name', ''))}"
                    f"{repeat}</td><td>{html.escape(info.get('created_utc', ''))}</td><td><ul>{''.join(cells)}</ul></td>"
                    f"<td>{index_cell(run_dir)}</td></tr>")
    body = f"""<h1>perfkit results</h1><p>Every figure in these reports was measured in the run that produced it;
each report ends with its provenance (engine, versions, host, parameters). A headline figure here is the same
figure, with the same value, as in its study's report and in <code>perfkit compare</code>.</p>
{'<p><a href="history.html">History</a>: each headline figure over these runs, and where it changed.</p>' if (results_dir / "history.html").exists() else ""}
{before_after_section(runs)}
<h2>Runs</h2>
<table><thead><tr><th>run</th><th>parameters</th><th>created (UTC)</th><th>studies</th><th>headline figures (value, n)</th>
</tr></thead><tbody>{''.join(rows)}</tbody></table>
{index_section(results_dir)}"""
    text = page("perfkit results", body, assets=ASSETS, toc=False)
    # Runs in the same results directory may finish together: each writes its own file, then renames.
    tmp = results_dir / f".index.html.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    tmp.write_text(text)
    tmp.replace(results_dir / "index.html")
    return results_dir / "index.html"
