"""A run's figures files, computed from its recorded data when a study's is missing or older than this
perfkit writes (a run made by an earlier version): by the study's own analysis, no server, no notebook."""

from __future__ import annotations

import json
from pathlib import Path

from perfkit.analysis.figures import FILE_NAME, SCHEMA_VERSION
from perfkit.core.errors import PerfkitError
from perfkit.studies.base import analyze_all


def _current(path: Path) -> bool:
    try:
        return int(json.loads(path.read_text()).get("schema_version", 0)) >= SCHEMA_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def ensure(run_dir: str | Path) -> list[str]:
    """Write ``<study>/figures.json`` for every study of the run that lacks a current one; returns those
    studies. PerfkitError when the run's parameters are missing (the analysis needs them)."""
    run_dir = Path(run_dir)
    todo = [d.name for d in sorted(run_dir.iterdir()) if d.is_dir() and (d / "trials.jsonl").is_file()
            and not _current(d / FILE_NAME)] if run_dir.is_dir() else []
    if not todo:
        return []
    params = run_dir / "params.yaml"
    if not params.is_file():
        raise PerfkitError(f"{run_dir}: {', '.join(todo)} have no figures yet and the run has no params.yaml to "
                           "compute them with")
    for study in todo:
        try:
            analyze_all(params, run_dir, study)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise PerfkitError(f"{run_dir / study / 'trials.jsonl'}: its rows could not be analyzed as {study} "
                               f"trials ({type(e).__name__}: {e}); they are not perfkit data of this study") from None
    return todo
