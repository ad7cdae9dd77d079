"""Publishing: a study's notebook executed by papermill (in a child process group that dies with perfkit),
rendered to HTML by nbconvert; a comparison of two runs published the same way."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path

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
            env: dict[str, str] | None = None) -> Path:
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
                     log_path, env={**owner_env(run_dir), **(env or {})})
    if code:
        cell, error = first_error(out)
        where = f"in cell {cell}" if cell is not None else "before finishing"
        raise StudyFailed(f"study {study} failed {where}: {error}\n"
                          f"  executed notebook (with the traceback): {out}\n"
                          f"  papermill log: {log_path}\n"
                          f"  data measured so far is kept in {run_dir / study}")
    return out


def papermill(notebook: Path, out: Path, parameters: dict[str, str], log_path: Path, *,
              env: dict[str, str] | None = None) -> int:
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
            return proc.wait()
        except BaseException:
            kill_process_group(proc.pid, grace_s=3.0, proc=proc)
            raise


def warning_html(warnings: list[str], title: str = "Damaged data: read these numbers with care") -> str:
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return (f'<div class="perfkit-warning" style="border:2px solid #b00;background:#fff3f3;padding:.6em 1em;'
            f'margin:1em 0"><strong>&#9888; {html.escape(title)}</strong><ul>{items}</ul></div>')


def render(executed: Path, html_path: Path, warnings: list[str] | None = None,
           notes: list[str] | None = None) -> Path:
    """HTML with code hidden, plots embedded, stderr (progress bars, warnings) left out.

    ``warnings`` (damaged data) and ``notes`` (repairs made) open the report in a visible box."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    boxes = (warning_html(warnings) if warnings else "") + (
        warning_html(notes, "Repaired data") if notes else "")
    if boxes:
        nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0,
                        nbformat.v4.new_markdown_cell(boxes))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body)
    return html_path



