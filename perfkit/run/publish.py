"""Publishing: a study's notebook executed by papermill (in a child process group that dies with perfkit),
rendered to HTML by nbconvert; a comparison of two runs published the same way."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

from perfkit.core.children import die_with_parent, kill_process_group, owner_env
from perfkit.core.errors import PerfkitError
from perfkit.studies import registry

class StudyFailed(PerfkitError):
    pass


def first_error(nb_path: Path) -> tuple[int | None, str]:
    """(execution count, 'Name: value') of the first cell that raised, from an executed notebook."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception:  # noqa: BLE001 - a notebook cut off mid-write
        return None, "the notebook did not finish"
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return cell.get("execution_count"), f"{out.get('ename')}: {out.get('evalue')}"
    return None, "the notebook did not finish"


def execute(study: str, params_path: Path, run_dir: Path, *, measure: bool = True,
            env: dict[str, str] | None = None, tick: Callable[[], None] | None = None) -> Path:
    """Run one study's notebook into ``run_dir/notebooks/``; StudyFailed names the cell and the error.

    papermill runs in a child process group: Ctrl-C or SIGTERM here stops it (nbclient alone does
    not pass an interrupt on). If this process dies without unwinding (``kill -9``), papermill gets
    SIGKILL from the kernel (PR_SET_PDEATHSIG, armed for the thread that forks it: this one, which
    waits for papermill to end). The notebook's kernel runs a lifeline (``perfkit.core.children``) that kills
    its engines and exits once papermill or this process is gone: no server outlives the run.
    ``$PERFKIT_OWNER`` / ``$PERFKIT_RUN_DIR`` tell the kernel who owns it; ``env`` adds variables.
    """
    out = run_dir / "notebooks" / f"{study}.ipynb"
    log_path = run_dir / "logs" / f"{study}-papermill.log"
    code = papermill(registry.get(study).notebook_path(), out, {"params_path": str(params_path.resolve()),
                                                "run_dir": str(run_dir.resolve()), "measure": str(measure)},
                     log_path, env={**owner_env(run_dir), **(env or {})}, tick=tick)
    if code:
        cell, error = first_error(out)
        where = f"in cell {cell}" if cell is not None else "before finishing"
        raise StudyFailed(f"study {study} failed {where}: {error}\n"
                          f"  executed notebook (with the traceback): {out}\n"
                          f"  papermill log: {log_path}\n"
                          f"  data measured so far is kept in {run_dir / study}")
    return out


def papermill(notebook: Path, out: Path, parameters: dict[str, str], log_path: Path, *,
              env: dict[str, str] | None = None, tick: Callable[[], None] | None = None) -> int:
    """Execute ``notebook`` into ``out`` with papermill (``-p name value`` each parameter, cwd the notebook's folder) in a
    child process group, output to ``log_path``; returns its exit status. Interrupts and this process's death
    reach it as described in :func:`execute`; ``env`` adds variables."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(out), "--cwd", str(notebook.parent),
           "-k", "python3", "--no-progress-bar"]
    for name, value in parameters.items():
        cmd += ["-p", name, value]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=die_with_parent(),
                                env={**os.environ, **(env or {})})
        try:
            while True:  # ``tick`` (a progress line) every second while the notebook runs
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if tick is not None:
                        tick()
        except BaseException:
            kill_process_group(proc.pid, grace_s=3.0, proc=proc)
            raise


def warning_html(warnings: list[str], title: str = "Damaged data: read these numbers with care") -> str:
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<div class="perfkit-warning"><strong>&#9888; {html.escape(title)}</strong><ul>{items}</ul></div>'


# The pages' policy: nothing but their own files (and the images embedded in them); no inline script.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "connect-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'")
_FIGURE_REPR = re.compile(r"^<(Figure|matplotlib)[^>]*>$")


def chart_html(n: int, data: dict) -> dict:
    alt = str(data.get("alt") or "a chart")
    figure = json.dumps(data.get("figure") or {}, default=str).replace("</", "<\\/")
    return {"text/html": f'<figure class="chart"><div class="plotly-chart" id="chart-{n}" role="img" '
                         f'aria-label="{html.escape(alt)}"></div><script type="application/json" id="chart-{n}-data">'
                         f"{figure}</script><figcaption>{html.escape(alt)}</figcaption></figure>"}


def _prepare(nb, heading_alt: str = "a plot") -> None:
    """Outputs as a report shows them: stderr (progress bars, warnings) left out; charts interactive; every
    image with alt text (its own, else the heading above it)."""
    from perfkit.report.charts import MIME

    n = 0
    heading = heading_alt
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found = re.findall(r"^#+\s+(.+)$", cell.source, re.M)
            if found:
                heading = found[-1].strip()
            continue
        if cell.cell_type != "code":
            continue
        keep = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                continue
            data = o.get("data") or {}
            if MIME in data:
                n += 1
                o["data"] = chart_html(n, data[MIME])
            elif "image/png" in data and "text/html" not in data:
                alt = str(data.get("text/plain") or "").strip()
                if not alt or _FIGURE_REPR.match(alt):
                    alt = f"plot: {heading}"
                o["data"] = {"text/html": f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
                                          f'{str(data["image/png"]).strip()}">'}
            keep.append(o)
        cell.outputs = keep


def _toc(body: str) -> str:
    items = []
    for level, ident, text in re.findall(r'<h([23]) id="([^"]+)">(.*?)<a class="anchor-link"', body):
        plain = re.sub(r"<[^>]+>", "", text)
        items.append(f'<li class="h{level}"><a href="#{html.escape(ident, quote=True)}">{plain}</a></li>')
    return f'<nav class="toc" aria-label="contents"><strong>Contents</strong><ul>{"".join(items)}</ul></nav>' \
        if items else ""


def page(title: str, body: str, *, nav: str = "", assets: str = "assets", toc: bool = True) -> str:
    """A whole report page: the policy, the site's stylesheet and scripts (relative: the results directory can
    be copied or served anywhere), the navigation, a table of contents, the body."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title>"
            f'<link rel="icon" href="{assets}/favicon.svg" type="image/svg+xml">'
            f'<link rel="stylesheet" href="{assets}/perfkit.css">'
            f'<script src="{assets}/plotly.min.js" defer></script><script src="{assets}/perfkit.js" defer></script>'
            f'</head><body><header class="site">{nav}</header><div class="layout">{_toc(body) if toc else ""}'
            f"<main>{body}</main></div></body></html>")


def render(executed: Path, html_path: Path, warnings: list[str] | None = None,
           notes: list[str] | None = None, *, title: str | None = None, nav: str = "",
           assets: str = "../assets") -> Path:
    """The executed notebook as a report page: code hidden, stderr left out, charts interactive, images with
    alt text, inside :func:`page`. ``warnings`` (damaged data) and ``notes`` (repairs made) open it in a
    visible box."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    boxes = (warning_html(warnings) if warnings else "") + (
        warning_html(notes, "Repaired data") if notes else "")
    if boxes:
        nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0,
                        nbformat.v4.new_markdown_cell(boxes))
    _prepare(nb)
    exporter = HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    if title is None:
        m = re.search(r"<h1[^>]*>(.*?)(<a class|</h1>)", body)
        title = re.sub(r"<[^>]+>", "", m.group(1)).strip() if m else html_path.stem
    html_path.write_text(page(title, body, nav=nav, assets=assets))
    return html_path
