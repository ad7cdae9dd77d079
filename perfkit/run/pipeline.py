"""The three things ``perfkit`` does with runs: measure (``run``: new, resumed, or with failed trials
retried), re-render from recorded data (``report``), and publish a comparison (``compare``). Everything that
can be checked is checked before any work starts."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from perfkit import kinds
from perfkit.core.clock import utc_now
from perfkit.core.errors import PerfkitError
from perfkit.core.secrets import redact_text
from perfkit.run import figures as run_figures, site
from perfkit.run.lock import RunLock
from perfkit.run.estimate import RunClock, expected_s
from perfkit.run.progress import Watcher
from perfkit.run.publish import StudyFailed, execute, first_error, papermill, render
from perfkit.run.rundir import (DamagedData, check_results_dir, failed_trials, new_run_dir, read_run,
                                resume_params, study_health, write_params_copy, write_run)
from perfkit.studies import registry
from perfkit.studies.base import ENV_REPLICATE, NOTEBOOKS

if TYPE_CHECKING:
    from perfkit.compare import Comparison


def _warn(msg: str) -> None:
    print(f"perfkit: warning: {msg}", file=sys.stderr)


def run(params_path: Path, studies: list[str], results_dir: Path, run_dir: Path | None = None, log=print, *,
        retry_failed: bool = False, warn: Callable[[str], Any] = _warn, repeat: int | None = None) -> Path:
    """Measure and publish; returns the run directory. Stops at the first failing study.

    Everything that can be checked is checked before a run directory is created or papermill starts:
    the parameters, the results directory, a resumed run's owner and parameters, the server.
    """
    from perfkit.run import preflight
    from perfkit.studies import params as params_mod

    params_path = Path(params_path)
    unknown = [s for s in studies if s not in registry.names()]
    if unknown:
        raise PerfkitError(f"unknown study {unknown[0]!r}; allowed: {', '.join(registry.names())}")
    params = params_mod.load(params_path, only=list(studies) or None)
    chosen = list(dict.fromkeys(studies)) or params.enabled()
    missing = [s for s in chosen if s not in params.enabled()]
    if missing:
        raise PerfkitError(f"{params_path}: studies.{missing[0]} is not set; this file enables: "
                           f"{', '.join(params.enabled())}")
    kinds.get(params.backend.kind).check_ready(params.backend)
    lock = None
    try:
        if run_dir is not None:
            lock = RunLock(run_dir, "perfkit run --resume", log=log).acquire()
            restore_servers(run_dir, log)  # a killed run changed a user's server: give it back first
            measure_with = resume_params(params_path, run_dir, read_run(run_dir))
        else:
            check_results_dir(results_dir)
            _restore_orphans(results_dir, log)
        reached = preflight.check(params, params_path, chosen)
        if reached:
            log(f"backend: {reached}")
        if run_dir is None:
            results_dir.mkdir(parents=True, exist_ok=True)
            run_dir = new_run_dir(results_dir, params.name)
            lock = RunLock(run_dir, "perfkit run", log=log).acquire()
            measure_with = write_params_copy(params_path, run_dir)
        (run_dir / "logs").mkdir(exist_ok=True)
        return _run_studies(params, params_path, chosen, results_dir, run_dir, measure_with, lock, log, warn,
                            retry_failed, repeat or params.repeat)
    finally:
        if lock is not None:
            lock.release()


def _render_study(executed: Path, run_dir: Path, study: str, damage: list[str] | None = None,
                  notes: list[str] | None = None) -> Path:
    """A study's report page, titled by the study and the run, with the run's navigation."""
    site.write_assets(run_dir.parent)
    return render(executed, run_dir / f"{study}.html", damage, notes,
                  title=f"{registry.get(study).title} — {run_dir.name}", nav=site.report_nav(run_dir, study))


def restore_servers(run_dir: Path, log=print) -> None:
    """Give users' servers their own settings back where a run of this directory changed them and was
    killed before it could (a record per study, written before the first restart)."""
    from perfkit.measure.session import RESTORE_RECORD

    for rec in sorted(Path(run_dir).glob(f"*/{RESTORE_RECORD}")) + sorted(Path(run_dir).glob(f"*/r*/{RESTORE_RECORD}")):
        try:
            info = kinds.restore_pending(rec)
        except Exception as e:  # noqa: BLE001 - said, and the record stays for the next try
            log(f"{rec}: could not give the server its own settings back: {e}")
            continue
        if info is not None:
            log(f"{rec.parent.name}: the server perfkit had restarted with other settings has its own back "
                f"(pid {info.pid_after})")


def _restore_orphans(results_dir: Path, log) -> None:
    """Runs in this results directory killed while a user's server ran on their settings (kill -9): restore."""
    from perfkit.core.children import owner_alive
    from perfkit.measure.session import RESTORE_RECORD

    for d in site.recent_runs(results_dir):
        if any(d.glob(f"*/{RESTORE_RECORD}")) or any(d.glob(f"*/r*/{RESTORE_RECORD}")):
            try:
                owner = read_run(d, live=False).get("owner")
            except PerfkitError:
                owner = None
            if not owner_alive(owner):
                restore_servers(d, log)


def _run_studies(params, params_path: Path, chosen: list[str], results_dir: Path, run_dir: Path, measure_with: Path,
                 lock: RunLock, log, warn, retry_failed: bool, repeat: int) -> Path:
    info = read_run(run_dir) or {"run_id": run_dir.name, "params_name": params.name, "created_utc": utc_now(),
                                 "params_file": str(params_path), "studies": {}}
    info["argv"] = [redact_text(a) for a in sys.argv]
    info["owner"] = lock.owner
    info["repeat"] = repeat = max(repeat, int(info.get("repeat") or 1))
    base_env = {"PERFKIT_RETRY_FAILED": "1"} if retry_failed else {}
    todo = [s for s in chosen if (info["studies"].get(s) or {}).get("status") not in ("done", "skipped")]
    clock = RunClock({s: expected_s(results_dir, params.name, s, getattr(params.studies, s, None), exclude=run_dir)
                      for s in todo}, todo * repeat)
    # Replicates interleave (every study once, then every study again ...), so drift over the run's time (a
    # warming machine, a filling page cache) spreads over the replicates instead of favouring one.
    for rep in range(1, repeat + 1):
        for study in chosen:
            st = info["studies"].get(study, {})
            if st.get("status") == "skipped":
                continue
            done = int(st.get("replicates_done") or (1 if st.get("status") == "done" else 0))
            of = f" (replicate {rep} of {repeat})" if repeat > 1 else ""
            if done >= rep:
                failed = failed_trials(run_dir, study, rep) if retry_failed else 0
                if not failed:
                    if rep == 1:
                        log(f"[{study}] already done in this run: skipped (re-render with `perfkit report {run_dir}`)")
                    continue
                log(f"[{study}]{of} {failed} trial(s) whose last attempt failed: measuring them again (--retry-failed)")
            why_not = registry.get(study).unavailable(params)
            if why_not:
                log(f"[{study}] skipped: {why_not}")
                info["studies"][study] = {"status": "skipped", "why": why_not, "ended_utc": utc_now()}
                write_run(run_dir, info)
                continue
            damage, _ = study_health(run_dir, study)
            for d in damage:
                warn(f"damaged data: {d}")
            log(f"[{study}] measuring{of} ...")
            st = info["studies"].setdefault(study, {})
            st.update(status="running", replicates_done=max(done, rep - 1))
            st.setdefault("started_utc", utc_now())
            write_run(run_dir, info)
            t0 = datetime.now(timezone.utc)
            clock.start(study)
            watcher = Watcher(study, run_dir / study, label=of,
                              run_left_s=lambda elapsed, s=study: clock.left_s(s, elapsed))
            try:
                executed = execute(study, measure_with, run_dir, measure=True,
                                   env={**base_env, ENV_REPLICATE: str(rep)}, tick=watcher.tick)
            except KeyboardInterrupt as e:
                watcher.finish()
                st.update(status="interrupted", ended_utc=utc_now())
                write_run(run_dir, info)
                restore_servers(run_dir, log)
                site.write_index(results_dir)
                e.resume = f"perfkit run {params_path} --resume {run_dir}"  # what main() says in one line
                e.run_dir = str(run_dir)
                raise
            except StudyFailed as e:
                watcher.finish()
                st.update(status="failed", error=str(e).splitlines()[0], ended_utc=utc_now())
                write_run(run_dir, info)
                restore_servers(run_dir, log)
                failed = run_dir / "notebooks" / f"{study}.ipynb"
                if failed.exists():
                    _render_study(failed, run_dir, study, *study_health(run_dir, study))
                site.write_index(results_dir)
                raise
            watcher.finish()
            clock.done(study)
            damage, notes = study_health(run_dir, study)
            for d in damage:
                warn(f"damaged data: {d}")
            _render_study(executed, run_dir, study, damage, notes)
            secs = (datetime.now(timezone.utc) - t0).total_seconds()
            st.update(status="done" if rep >= repeat else f"partial ({rep} of {repeat} replicates)",
                      replicates_done=max(done, rep), ended_utc=utc_now(),
                      wall_s=round(float(st.get("wall_s") or 0) * (done >= rep) + secs, 1), html=f"{study}.html")
            write_run(run_dir, info)
            site.refresh_navs(run_dir)  # the pages rendered before this one now link to it
            log(f"[{study}]{of} done in {secs:.0f} s → {run_dir / (study + '.html')}")
    _write_history(results_dir, warn)
    site.write_index(results_dir)
    return run_dir


def _write_history(results_dir: Path, warn) -> None:
    """The history page and database, with this run in them (a failure there never fails the run)."""
    from perfkit.run.history_page import write_history

    try:
        write_history(results_dir)
    except Exception as e:  # noqa: BLE001 - the run's own reports are what matter; said, not raised
        warn(f"the history page could not be updated ({type(e).__name__}: {e}); `perfkit history` tries again")


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
    with RunLock(run_dir, "perfkit report", log=log):
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
            out.append(_render_study(executed, run_dir, study, *health[study]))
            st = info["studies"][study]
            st["html"] = f"{study}.html"
            st["rendered_utc"] = utc_now()
            if health[study][0]:
                st["damaged"] = health[study][0]
            log(f"[{study}] re-rendered → {out[-1]}")
        write_run(run_dir, info)
    site.refresh_navs(run_dir)
    site.write_index(results_dir or run_dir.parent)
    return out


def store_comparison(run_a: str | Path, run_b: str | Path, out: str | Path | None = None, *,
                     min_effect: float | None = None) -> tuple[Path, Comparison]:
    """Compare run A (before) with run B (after) and store it, once for the pair: ``<out>/comparison.json``
    (default ``<results>/compare-<A>-vs-<B>/``). Returns the file and the comparison. Fails before writing
    anything when either is not a run."""
    from perfkit import compare as compare_mod

    for r in (run_a, run_b):
        if Path(r).is_dir():
            run_figures.ensure(r)  # a run made before figures files, or by an older perfkit
    comparison = compare_mod.compare(run_a, run_b, min_effect=min_effect)
    out = Path(out) if out else site.default_out(run_a, run_b)
    out.mkdir(parents=True, exist_ok=True)
    return comparison.to_json(out / compare_mod.FILE_NAME), comparison


def load_comparison(path: str | Path | None, results_dir: str | Path = "results") -> Comparison:
    """The compare notebook's comparison: the one stored at ``path`` (what ``perfkit compare`` passes it), read,
    not computed again; without a path (the notebook opened by hand) the two most recent runs in
    ``results_dir``, compared in memory."""
    from perfkit import compare as compare_mod

    if path:
        return compare_mod.Comparison.read(path)
    a, b = site.pick(None, None, results_dir)
    for r in (a, b):
        run_figures.ensure(r)
    return compare_mod.compare(a, b)


def compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None, *,
            min_effect: float | None = None) -> tuple[Path, Comparison]:
    """``perfkit compare``: store the comparison (:func:`store_comparison`), then write ``comparison.html`` beside
    it, the compare notebook executed by papermill on that stored file and rendered like the study reports;
    refresh the results index. Returns the HTML's path and the comparison."""
    stored, comparison = store_comparison(run_a, run_b, out, min_effect=min_effect)
    out = stored.parent
    executed = out / "compare.ipynb"
    code = papermill(NOTEBOOKS / "compare.ipynb", executed, {"comparison": str(stored.resolve())},
                     out / "papermill.log")
    if code:
        cell, error = first_error(executed)
        raise PerfkitError(f"the comparison notebook failed{f' in cell {cell}' if cell is not None else ''}: "
                           f"{error}\n  executed notebook: {executed}\n  papermill log: {out / 'papermill.log'}\n"
                           f"  the figures are in {stored}")
    site.write_assets(out.parent)
    html_path = render(executed, out / "comparison.html", None, title=f"{comparison.name_a} → {comparison.name_b}: "
                       "what changed", nav=site.compare_nav(Path(run_a), Path(run_b)))
    if site.recent_runs(out.parent):
        site.write_index(out.parent)
    return html_path, comparison
