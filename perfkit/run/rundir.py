"""A run directory's lifecycle: its id, its record (``run.json``), the redacted copy of its parameters, a
resumed run's parameter check, and the health of each study's recorded data.

A run lives in ``results/<run-id>/`` (``<time>-<name>-<random>``, created exclusively, so two runs started in
the same second never share one): ``params.yaml`` (the copy used, secret values redacted), ``run.json``
(status of each study), ``perfkit.lock`` (the live owner, :mod:`perfkit.run.lock`), ``<study>/`` (its
measured data and ``figures.json``), ``notebooks/`` (executed notebooks), ``logs/``, and ``<study>.html``.
"""

from __future__ import annotations

import json
import os
import secrets

import yaml
from datetime import datetime
from pathlib import Path
from typing import Any

from perfkit.core.children import owner_alive
from perfkit.core.errors import PerfkitError
from perfkit.core.secrets import REDACTED, redact, redacted_keys
from perfkit.core import runload
from perfkit.core.jsonl import JsonlLog
from perfkit.core.store import RunStore
from perfkit.core.yamlfile import read_yaml

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


def absolute_files(raw: Any, base_dir: Path) -> Any:
    """The parameters with each study's ``workload.file`` made absolute (relative ones are read from the
    parameter file's directory; a copy in the run directory must still find them)."""
    import copy

    out = copy.deepcopy(raw)
    for section in ((out or {}).get("studies") or {}).values() if isinstance(out, dict) else ():
        w = section.get("workload") if isinstance(section, dict) else None
        f = w.get("file") if isinstance(w, dict) else None
        if isinstance(f, str) and not f.startswith("builtin:") and not Path(f).expanduser().is_absolute():
            w["file"] = str((base_dir / Path(f).expanduser()).resolve())
    return out


def write_params_copy(params_path: Path, run_dir: Path) -> Path:
    """Write ``run_dir/params.yaml``: the parameters with secret values redacted (comments dropped:
    they may hold a token too) and workload files named by absolute path. Returns the file to measure with:
    the copy, or the user's file when the copy had to lose secrets that measuring needs (headers are sent,
    never recorded)."""
    raw = absolute_files(read_yaml(params_path), params_path.resolve().parent)
    red = redact(raw)
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
    kept = run_dir / "params.yaml"
    if not kept.exists():
        raise PerfkitError(f"--resume {run_dir}: the run has no params.yaml, so its parameters are unknown; "
                           "start a new run")
    started = info.get("params_file") or "the parameter file the run was started with"
    kept_raw = absolute_files(read_yaml(kept), kept.resolve().parent)
    if kept.resolve() == params_path.resolve():
        hidden = redacted_keys(kept_raw)
        if hidden:
            raise PerfkitError(f"--resume {run_dir}: {kept} has its secret values redacted ({', '.join(hidden)}), "
                               f"so it cannot be measured with; give {started} instead")
        return kept
    given_raw = absolute_files(read_yaml(params_path), params_path.resolve().parent)
    diff = _first_difference(redact(kept_raw), redact(given_raw))
    if diff:
        key, theirs, ours = diff
        raise PerfkitError(
            f"--resume {run_dir}: {params_path} is not the parameter file this run was started with: it differs "
            f"from {kept} at {key} ({_short(ours)} in {params_path.name}, {_short(theirs)} in the run). A resumed "
            f"run keeps its parameters: resume with {started}, or start a new run with {params_path}")
    if kept_raw != redact(kept_raw):  # a copy made before copies were redacted: redact it now
        write_params_copy(params_path, run_dir)
    return params_path.resolve() if given_raw != redact(given_raw) else kept


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
    data = runload.load(d, ("trials", "samples", "events", "manifest"))
    damage, notes = [f"{study}/{msg}" for msg in data.damage], []
    for name in ("trials", "samples", "events"):
        torn = JsonlLog(runload.log_path(d, name)).torn_path
        if torn.exists():
            n = sum(1 for line in torn.read_text(errors="replace").splitlines() if line.strip())
            notes.append(f"{study}/{name}.jsonl: {n} torn line(s) left by a kill mid-write were moved to "
                         f"{torn.name} when the run was resumed; their trials were measured again")
    if (d / "trials.jsonl").exists():
        if data.manifest_missing:
            damage.append(f"{study}/manifest.json is missing: the provenance (engine, versions, host, models) "
                          "of these numbers is unknown")
        elif data.manifest_problem:
            damage.append(f"{study}/manifest.json is not a valid JSON object ({data.manifest_problem}): "
                          "provenance unknown")
    return damage, notes


class DamagedData(PerfkitError):
    pass


def failed_trials(run_dir: Path, study: str, replicate: int = 1) -> int:
    """Trials of a study (replicate) whose last attempt failed."""
    store_dir = run_dir / study if replicate == 1 else run_dir / study / f"r{replicate}"
    if not (store_dir / "trials.jsonl").exists():
        return 0
    store = RunStore(store_dir)
    return len(store.done_ids(retry_failed=False)) - len(store.done_ids(retry_failed=True))


