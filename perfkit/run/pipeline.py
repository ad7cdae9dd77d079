"""Executing the study notebooks (papermill) and publishing them as HTML (nbconvert).

A run lives in ``results/<run-id>/`` (``<time>-<name>-<random>``, created exclusively, so two runs
started in the same second never share one): ``params.yaml`` (the copy used, secret values redacted),
``run.json`` (status of each study), ``perfkit.lock`` (the live owner, see ``perfkit.run.lock``),
``<study>/`` (its measured data), ``notebooks/`` (executed notebooks), ``logs/``, and ``<study>.html``.
``results/index.html`` links every run and study.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from perfkit.core.errors import PerfkitError
from perfkit.core.children import die_with_parent, kill_process_group, owner_alive, owner_env
from perfkit.run.lock import RunLock
from perfkit.core.store import _SECRET, _SECRET_VALUE, REDACTED, JsonlLog, RunStore

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def notebook_for(study: str) -> Path:
    path = NOTEBOOKS / f"{study}.ipynb"
    if not path.exists():
        raise PerfkitError(f"no notebook for study {study!r} at {path}")
    return path


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


OWNER_DIED = "interrupted (owner died)"


def read_run(run_dir: Path, *, live: bool = True) -> dict[str, Any]:
    """run.json; with ``live``, a study still marked running whose owner process is gone (killed,
    crashed, machine rebooted) reads as ``interrupted (owner died)``."""
    path = run_dir / "run.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PerfkitError(f"{path}: unreadable ({type(e).__name__}: {e}); the measured data in "
                           f"{run_dir}/<study>/trials.jsonl is not affected") from None
    if not isinstance(info, dict) or not isinstance(info.get("studies", {}), dict):
        raise PerfkitError(f"{path}: not a perfkit run record (expected an object with 'studies')")
    info.setdefault("studies", {})
    if live and not owner_alive(info.get("owner")):
        for st in info["studies"].values():
            if isinstance(st, dict) and st.get("status") == "running":
                st["status"] = OWNER_DIED
    return info


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
    code = papermill(notebook_for(study), out, {"params_path": str(params_path.resolve()),
                                                "run_dir": str(run_dir.resolve()), "measure": str(measure)},
                     log_path, env={**owner_env(run_dir), **(env or {})})
    if code:
        cell, error = _first_error(out)
        where = f"in cell {cell}" if cell is not None else "before finishing"
        raise StudyFailed(f"study {study} failed {where}: {error}\n"
                          f"  executed notebook (with the traceback): {out}\n"
                          f"  papermill log: {log_path}\n"
                          f"  data measured so far is kept in {run_dir / study}")
    return out


def papermill(notebook: Path, out: Path, parameters: dict[str, str], log_path: Path, *,
              env: dict[str, str] | None = None) -> int:
    """Execute ``notebook`` into ``out`` with papermill (``-p name value`` each parameter, cwd notebooks/) in a
    child process group, output to ``log_path``; returns its exit status. Interrupts and this process's death
    reach it as described in :func:`execute`; ``env`` adds variables."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(out), "--cwd", str(NOTEBOOKS),
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


# ---- the run directory ---------------------------------------------------------------------------

def redact_values(obj: Any, secret: bool = False) -> Any:
    """A parameter file's data with every secret *value* replaced by ``***``, keys and shape kept
    (so the copy still validates): values under a secret-looking key (headers, api_key, token ...)
    and 'Bearer …' / 'Basic …' strings anywhere."""
    if isinstance(obj, dict):
        return {k: redact_values(v, secret or (isinstance(k, str) and bool(_SECRET.search(k))))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_values(v, secret) for v in obj]
    if secret and obj is not None:
        return REDACTED
    if isinstance(obj, str) and _SECRET_VALUE.match(obj):
        return REDACTED
    return obj


def _redacted_keys(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _redacted_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in _redacted_keys(v, f"{prefix}[{i}]")]
    return [prefix] if obj == REDACTED else []


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                return key, a.get(k, "(absent)"), b.get(k, "(absent)")
            d = _first_difference(a[k], b[k], key)
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{prefix}[{i}]")
            if d:
                return d
        return None
    return None if a == b else (prefix or "(top level)", a, b)


def write_params_copy(params_path: Path, run_dir: Path) -> Path:
    """Write ``run_dir/params.yaml``: the parameters with secret values redacted (comments dropped:
    they may hold a token too). Returns the file to measure with: the copy, or the user's file when
    the copy had to lose secrets that measuring needs (headers are sent, never recorded)."""
    import yaml

    from perfkit.studies.params import read_yaml

    raw = read_yaml(params_path)
    red = redact_values(raw)
    text = (f"# The parameters of this run, from {params_path.name}, as validated at its start.\n"
            f"# Secret values (headers, keys, tokens) are replaced by {REDACTED}: they are never recorded.\n"
            + yaml.safe_dump(red, sort_keys=False, allow_unicode=True))
    tmp = run_dir / "params.yaml.tmp"
    tmp.write_text(text)
    tmp.replace(run_dir / "params.yaml")
    return run_dir / "params.yaml" if red == raw else params_path.resolve()


def resume_params(params_path: Path, run_dir: Path, info: dict[str, Any]) -> Path:
    """The file to measure a resumed run with; PerfkitError if ``params_path`` is not the run's parameters.

    The given file must equal the run's ``params.yaml`` except for redacted secret values (which it
    must supply, since they are needed to measure); the run's own copy is fine if it has no secrets.
    """
    from perfkit.studies.params import read_yaml

    kept = run_dir / "params.yaml"
    if not kept.exists():
        raise PerfkitError(f"--resume {run_dir}: the run has no params.yaml, so its parameters are unknown; "
                           "start a new run")
    started = info.get("params_file") or "the parameter file the run was started with"
    kept_raw = read_yaml(kept)
    if kept.resolve() == params_path.resolve():
        hidden = _redacted_keys(kept_raw)
        if hidden:
            raise PerfkitError(f"--resume {run_dir}: {kept} has its secret values redacted ({', '.join(hidden)}), "
                               f"so it cannot be measured with; give {started} instead")
        return kept
    given_raw = read_yaml(params_path)
    diff = _first_difference(redact_values(kept_raw), redact_values(given_raw))
    if diff:
        key, theirs, ours = diff
        raise PerfkitError(
            f"--resume {run_dir}: {params_path} is not the parameter file this run was started with: it differs "
            f"from {kept} at {key} ({_short(ours)} in {params_path.name}, {_short(theirs)} in the run). A resumed "
            f"run keeps its parameters: resume with {started}, or start a new run with {params_path}")
    if kept_raw != redact_values(kept_raw):  # a copy made before copies were redacted: redact it now
        write_params_copy(params_path, run_dir)
    return params_path.resolve() if given_raw != redact_values(given_raw) else kept


def _short(v: Any) -> str:
    t = repr(v)
    return t if len(t) <= 60 else t[:57] + "..."


def new_run_dir(results_dir: Path, name: str) -> Path:
    """A new, empty run directory: ``<time>-<name>-<6 hex>``, created exclusively (never shared)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        run_dir = results_dir / f"{stamp}-{name}-{secrets.token_hex(3)}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise PerfkitError(f"could not create a new run directory in {results_dir}")


def check_results_dir(results_dir: Path) -> None:
    """PerfkitError unless ``results_dir`` is, or can become, a writable directory (nothing is created)."""
    p = Path(results_dir)
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                what = "is a file" if q.is_file() else "is not a directory"
                raise PerfkitError(f"--results {results_dir}: {q} {what}; give a directory for the results")
            if not os.access(q, os.W_OK | os.X_OK):
                raise PerfkitError(f"--results {results_dir}: {q} is not writable")
            return
    raise PerfkitError(f"--results {results_dir}: no existing parent directory")


def study_health(run_dir: Path, study: str) -> tuple[list[str], list[str]]:
    """(damage, notes) of a study's recorded data: unreadable lines, a missing or unreadable manifest;
    torn lines that a resume moved aside (its trial measured again) are notes, not damage."""
    d = run_dir / study
    damage, notes = [], []
    for name in ("trials.jsonl", "samples.jsonl", "events.jsonl"):
        log = JsonlLog(d / name)
        damage += [f"{study}/{msg}" for msg in log.scan()[1]]
        if log.torn_path.exists():
            n = sum(1 for line in log.torn_path.read_text(errors="replace").splitlines() if line.strip())
            notes.append(f"{study}/{name}: {n} torn line(s) left by a kill mid-write were moved to "
                         f"{log.torn_path.name} when the run was resumed; their trials were measured again")
    if (d / "trials.jsonl").exists():
        m = d / "manifest.json"
        if not m.exists():
            damage.append(f"{study}/manifest.json is missing: the provenance (engine, versions, host, models) "
                          "of these numbers is unknown")
        else:
            try:
                ok = isinstance(json.loads(m.read_text()), dict)
            except (OSError, ValueError):
                ok = False
            if not ok:
                damage.append(f"{study}/manifest.json is not a valid JSON object: provenance unknown")
    return damage, notes


class DamagedData(PerfkitError):
    pass


def _failed_trials(run_dir: Path, study: str) -> int:
    store_dir = run_dir / study
    if not (store_dir / "trials.jsonl").exists():
        return 0
    store = RunStore(store_dir)
    return len(store.done_ids(retry_failed=False)) - len(store.done_ids(retry_failed=True))


def _warn(msg: str) -> None:
    print(f"perfkit: warning: {msg}", file=sys.stderr)


def run(params_path: Path, studies: list[str], results_dir: Path, run_dir: Path | None = None, log=print, *,
        retry_failed: bool = False, warn: Callable[[str], Any] = _warn) -> Path:
    """Measure and publish; returns the run directory. Stops at the first failing study.

    Everything that can be checked is checked before a run directory is created or papermill starts:
    the parameters, the results directory, a resumed run's owner and parameters, the server.
    """
    from perfkit.studies import params as params_mod
    from perfkit.run.preflight import check_backend

    params_path = Path(params_path)
    unknown = [s for s in studies if s not in params_mod.STUDIES]
    if unknown:
        raise PerfkitError(f"unknown study {unknown[0]!r}; allowed: {', '.join(params_mod.STUDIES)}")
    params = params_mod.load(params_path)
    chosen = list(dict.fromkeys(studies)) or params.enabled()
    missing = [s for s in chosen if s not in params.enabled()]
    if missing:
        raise PerfkitError(f"{params_path}: studies.{missing[0]} is not set; this file enables: "
                           f"{', '.join(params.enabled())}")
    if params.backend.kind == "embedded":
        from perfkit.servers.engine import binary
        from perfkit.servers.models import models_dir

        binary()  # a clear error now if the engine is not built, not in a notebook cell later
        if not any(models_dir().glob("*.gguf")) and not params.backend.models_dir:
            raise PerfkitError("the model store is empty: run `perfkit models prepare`")
    lock = None
    try:
        if run_dir is not None:
            lock = RunLock(run_dir, "perfkit run --resume", log=log).acquire()
            measure_with = resume_params(params_path, run_dir, read_run(run_dir))
        else:
            check_results_dir(results_dir)
        reached = check_backend(params, params_path)
        if reached:
            log(f"backend: {reached}")
        if run_dir is None:
            results_dir.mkdir(parents=True, exist_ok=True)
            run_dir = new_run_dir(results_dir, params.name)
            lock = RunLock(run_dir, "perfkit run", log=log).acquire()
            measure_with = write_params_copy(params_path, run_dir)
        (run_dir / "logs").mkdir(exist_ok=True)
        return _run_studies(params, params_path, chosen, results_dir, run_dir, measure_with, lock, log, warn,
                            retry_failed)
    finally:
        if lock is not None:
            lock.release()


def _cannot_run(params, study: str) -> str | None:
    """Why a study can't run on this machine (and every other study still does), or None."""
    if study == "fleet" and not params.studies.fleet.server_urls:
        from perfkit.servers.nginx import install_hint, nginx_binary

        if nginx_binary() is None:
            return f"nginx is not installed; {install_hint()}"
    return None


def _run_studies(params, params_path: Path, chosen: list[str], results_dir: Path, run_dir: Path, measure_with: Path,
                 lock: RunLock, log, warn, retry_failed: bool) -> Path:
    info = read_run(run_dir) or {"run_id": run_dir.name, "params_name": params.name, "created_utc": _utc(),
                                 "params_file": str(params_path), "studies": {}}
    info["argv"] = sys.argv
    info["owner"] = lock.owner
    env = {"PERFKIT_RETRY_FAILED": "1"} if retry_failed else {}
    for study in chosen:
        if info["studies"].get(study, {}).get("status") == "done":
            failed = _failed_trials(run_dir, study) if retry_failed else 0
            if not failed:
                log(f"[{study}] already done in this run: skipped (re-render with `perfkit report {run_dir}`)")
                continue
            log(f"[{study}] {failed} trial(s) whose last attempt failed: measuring them again (--retry-failed)")
        why_not = _cannot_run(params, study)
        if why_not:
            log(f"[{study}] skipped: {why_not}")
            info["studies"][study] = {"status": "skipped", "why": why_not, "ended_utc": _utc()}
            write_run(run_dir, info)
            continue
        damage, _ = study_health(run_dir, study)
        for d in damage:
            warn(f"damaged data: {d}")
        log(f"[{study}] measuring ...")
        info["studies"][study] = {"status": "running", "started_utc": _utc()}
        write_run(run_dir, info)
        t0 = datetime.now(timezone.utc)
        try:
            executed = execute(study, measure_with, run_dir, measure=True, env=env)
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
                render(failed, run_dir / f"{study}.html", *study_health(run_dir, study))
            write_index(results_dir)
            raise
        damage, notes = study_health(run_dir, study)
        for d in damage:
            warn(f"damaged data: {d}")
        render(executed, run_dir / f"{study}.html", damage, notes)
        secs = (datetime.now(timezone.utc) - t0).total_seconds()
        info["studies"][study].update(status="done", ended_utc=_utc(), wall_s=round(secs, 1),
                                      html=f"{study}.html")
        write_run(run_dir, info)
        log(f"[{study}] done in {secs:.0f} s → {run_dir / (study + '.html')}")
    write_index(results_dir)
    return run_dir


def report(run_dir: Path, results_dir: Path | None = None, log=print, *, allow_damaged: bool = False,
           warn: Callable[[str], Any] = _warn) -> list[Path]:
    """Re-render every study of a run from its recorded data; no server is contacted.

    Damaged data (unreadable lines, a missing manifest) is refused before anything is rendered,
    unless ``allow_damaged``: then each affected report opens with a visible warning."""
    run_dir = Path(run_dir)
    if not read_run(run_dir):
        raise PerfkitError(f"{run_dir} is not a perfkit run (no run.json)")
    if not (run_dir / "params.yaml").is_file():
        raise PerfkitError(f"{run_dir}/params.yaml is missing: the run's parameters are needed to render it")
    with RunLock(run_dir, "perfkit report", log=log) as lock:
        info = read_run(run_dir)
        studies = [s for s in info["studies"] if (run_dir / s / "trials.jsonl").exists()]
        for study in info["studies"]:
            if study not in studies:
                log(f"[{study}] no recorded data: skipped")
        health = {s: study_health(run_dir, s) for s in studies}
        damage = [d for s in studies for d in health[s][0]]
        if damage and not allow_damaged:
            raise DamagedData(f"{run_dir} has damaged data; nothing was re-rendered:\n"
                              + "\n".join(f"  - {d}" for d in damage)
                              + "\nRender anyway with --allow-damaged: each affected report then opens with "
                                "this warning.")
        for d in damage:
            warn(f"damaged data: {d}")
        out = []
        for study in studies:
            executed = execute(study, run_dir / "params.yaml", run_dir, measure=False)
            out.append(render(executed, run_dir / f"{study}.html", *health[study]))
            st = info["studies"][study]
            st["html"] = f"{study}.html"
            st["rendered_utc"] = _utc()
            if health[study][0]:
                st["damaged"] = health[study][0]
            log(f"[{study}] re-rendered → {out[-1]}")
        write_run(run_dir, info)
    write_index(results_dir or run_dir.parent)
    return out


def write_index(results_dir: Path) -> Path:
    """``results/index.html``: every run, newest first, with its studies' status, reports and headline
    figures; the ``perfkit compare`` command for two runs and links to comparisons already made."""
    from perfkit.compare import index_cell, index_section

    rows = []
    for run_dir in sorted((p for p in results_dir.iterdir() if (p / "run.json").exists()), reverse=True):
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
            cells.append(f'<li class="{html.escape(cls)}">{link} — {html.escape(status)}{extra}</li>')
        rows.append(f"<tr><td>{html.escape(run_dir.name)}</td><td>{html.escape(info.get('params_name', ''))}</td>"
                    f"<td>{html.escape(info.get('created_utc', ''))}</td><td><ul>{''.join(cells)}</ul></td>"
                    f"<td>{index_cell(run_dir)}</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>perfkit results</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}}ul{{margin:0;padding-left:1.2em}}
li.failed,li.unreadable{{color:#b00}}li.running,li.interrupted{{color:#a60}}.muted{{color:#777}}
pre{{background:#f6f6f6;padding:.5em;overflow-x:auto}}</style></head><body>
<h1>perfkit results</h1><p>Every figure in these reports was measured in the run that produced it; each report ends
with its provenance (engine, versions, host, parameters).</p>
<table><tr><th>run</th><th>parameters</th><th>created (UTC)</th><th>studies</th><th>headline figures (median, n)</th>
</tr>{''.join(rows)}</table>
{index_section(results_dir)}
</body></html>"""
    results_dir.mkdir(parents=True, exist_ok=True)
    # Runs in the same results directory may finish together: each writes its own file, then renames.
    tmp = results_dir / f".index.html.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    tmp.write_text(page)
    tmp.replace(results_dir / "index.html")
    return results_dir / "index.html"
