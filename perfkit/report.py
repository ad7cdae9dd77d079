"""Executing the study notebooks (papermill) and publishing them as HTML (nbconvert).

A run lives in ``results/<run-id>/``: ``params.yaml`` (the copy used), ``run.json`` (status of
each study), ``<study>/`` (its measured data), ``notebooks/`` (executed notebooks), ``logs/``,
and ``<study>.html``. ``results/index.html`` links every run and study.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import PerfkitError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_for(study: str) -> Path:
    path = NOTEBOOKS / f"{study}.ipynb"
    if not path.exists():
        raise PerfkitError(f"no notebook for study {study!r} at {path}")
    return path


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_run(run_dir: Path, info: dict[str, Any]) -> None:
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(run_dir / "run.json")


class StudyFailed(PerfkitError):
    pass


def _first_error(nb_path: Path) -> tuple[int | None, str]:
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


def execute(study: str, params_path: Path, run_dir: Path, *, measure: bool = True) -> Path:
    """Run one study's notebook into ``run_dir/notebooks/``; StudyFailed names the cell and the error.

    papermill runs in a child process group: Ctrl-C or SIGTERM here stops it (nbclient alone does
    not pass an interrupt on), its kernel then exits with its parent, and the kernel's engine with
    the kernel, so no server outlives the run.
    """
    out = run_dir / "notebooks" / f"{study}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "logs" / f"{study}-papermill.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(notebook_for(study)), str(out), "--cwd", str(NOTEBOOKS),
           "-k", "python3", "--no-progress-bar", "-p", "params_path", str(params_path.resolve()),
           "-p", "run_dir", str(run_dir.resolve()), "-p", "measure", str(measure)]
    from .engine import kill_process_group

    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            kill_process_group(proc.pid, grace_s=3.0)
            raise
    if code:
        cell, error = _first_error(out)
        where = f"in cell {cell}" if cell is not None else "before finishing"
        raise StudyFailed(f"study {study} failed {where}: {error}\n"
                          f"  executed notebook (with the traceback): {out}\n"
                          f"  papermill log: {log_path}\n"
                          f"  data measured so far is kept in {run_dir / study}")
    return out


def render(executed: Path, html_path: Path) -> Path:
    """HTML with code hidden, plots embedded, stderr (progress bars, warnings) left out."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body)
    return html_path


def run(params_path: Path, studies: list[str], results_dir: Path, run_dir: Path | None = None, log=print) -> Path:
    """Measure and publish; returns the run directory. Stops at the first failing study."""
    from . import params as params_mod

    unknown = [s for s in studies if s not in params_mod.STUDIES]
    if unknown:
        raise PerfkitError(f"unknown study {unknown[0]!r}; allowed: {', '.join(params_mod.STUDIES)}")
    params = params_mod.load(params_path)
    chosen = studies or params.enabled()
    missing = [s for s in chosen if s not in params.enabled()]
    if missing:
        raise PerfkitError(f"{params_path}: studies.{missing[0]} is not set; this file enables: "
                           f"{', '.join(params.enabled())}")
    if params.backend.kind == "embedded":
        from .engine import binary
        from .models import models_dir

        binary()  # a clear error now if the engine is not built, not in a notebook cell later
        if not any(models_dir().glob("*.gguf")) and not params.backend.models_dir:
            raise PerfkitError("the model store is empty: run `perfkit models prepare`")
    if run_dir is None:
        run_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{params.name}"
        run_dir = results_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    if not (run_dir / "params.yaml").exists():
        shutil.copyfile(params_path, run_dir / "params.yaml")
    kept = run_dir / "params.yaml"
    info = read_run(run_dir) or {"run_id": run_dir.name, "params_name": params.name, "created_utc": _utc(),
                                 "params_file": str(params_path), "studies": {}}
    info["argv"] = sys.argv
    for study in chosen:
        if info["studies"].get(study, {}).get("status") == "done":
            log(f"[{study}] already done in this run: skipped (re-render with `perfkit report {run_dir}`)")
            continue
        log(f"[{study}] measuring ...")
        info["studies"][study] = {"status": "running", "started_utc": _utc()}
        write_run(run_dir, info)
        t0 = datetime.now(timezone.utc)
        try:
            executed = execute(study, kept, run_dir, measure=True)
        except KeyboardInterrupt:
            info["studies"][study].update(status="interrupted", ended_utc=_utc())
            write_run(run_dir, info)
            write_index(results_dir)
            raise
        except StudyFailed as e:
            info["studies"][study].update(status="failed", error=str(e).splitlines()[0], ended_utc=_utc())
            write_run(run_dir, info)
            failed = run_dir / "notebooks" / f"{study}.ipynb"
            if failed.exists():
                render(failed, run_dir / f"{study}.html")
            write_index(results_dir)
            raise
        render(executed, run_dir / f"{study}.html")
        secs = (datetime.now(timezone.utc) - t0).total_seconds()
        info["studies"][study].update(status="done", ended_utc=_utc(), wall_s=round(secs, 1),
                                      html=f"{study}.html")
        write_run(run_dir, info)
        log(f"[{study}] done in {secs:.0f} s → {run_dir / (study + '.html')}")
    write_index(results_dir)
    return run_dir


def report(run_dir: Path, results_dir: Path | None = None, log=print) -> list[Path]:
    """Re-render every study of a run from its recorded data; no server is contacted."""
    info = read_run(run_dir)
    if not info:
        raise PerfkitError(f"{run_dir} is not a perfkit run (no run.json)")
    out = []
    for study, st in info["studies"].items():
        if not (run_dir / study / "trials.jsonl").exists():
            log(f"[{study}] no recorded data: skipped")
            continue
        executed = execute(study, run_dir / "params.yaml", run_dir, measure=False)
        out.append(render(executed, run_dir / f"{study}.html"))
        st["html"] = f"{study}.html"
        st["rendered_utc"] = _utc()
        log(f"[{study}] re-rendered → {out[-1]}")
    write_run(run_dir, info)
    write_index(results_dir or run_dir.parent)
    return out


def write_index(results_dir: Path) -> Path:
    """``results/index.html``: every run, newest first, with its studies' status and reports."""
    rows = []
    for run_dir in sorted((p for p in results_dir.iterdir() if (p / "run.json").exists()), reverse=True):
        info = read_run(run_dir)
        cells = []
        for study, st in info.get("studies", {}).items():
            label = html.escape(study.replace("_", " "))
            if st.get("html") and (run_dir / st["html"]).exists():
                link = f'<a href="{html.escape(run_dir.name)}/{html.escape(st["html"])}">{label}</a>'
            else:
                link = label
            extra = f' ({st["wall_s"]:.0f} s)' if st.get("wall_s") else ""
            cls = st.get("status", "?")
            cells.append(f'<li class="{cls}">{link} — {html.escape(cls)}{extra}</li>')
        rows.append(f"<tr><td>{html.escape(run_dir.name)}</td><td>{html.escape(info.get('params_name', ''))}</td>"
                    f"<td>{html.escape(info.get('created_utc', ''))}</td><td><ul>{''.join(cells)}</ul></td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>perfkit results</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}}ul{{margin:0;padding-left:1.2em}}
li.failed{{color:#b00}}li.running{{color:#a60}}</style></head><body>
<h1>perfkit results</h1><p>Every figure in these reports was measured in the run that produced it; each report ends
with its provenance (engine, versions, host, parameters).</p>
<table><tr><th>run</th><th>parameters</th><th>created (UTC)</th><th>studies</th></tr>{''.join(rows)}</table>
</body></html>"""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "index.html").write_text(page)
    return results_dir / "index.html"
