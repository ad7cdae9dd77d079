"""A run as a comparison sees it: each study's figures (``figures.json``, the versioned data model), its
manifest (provenance, read in the current shape whatever store format wrote it) and ``run.json``; never its
trials, whose damage it only reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit.analysis.figures import FILE_NAME, Figure, FigureSet
from perfkit.core.children import owner_alive
from perfkit.core.errors import PerfkitError
from perfkit.core import runload


@dataclass
class Run:
    """A run directory read for comparison."""

    path: Path
    figures: dict[str, FigureSet]
    manifests: dict[str, dict]
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def studies(self) -> list[str]:
        return list(self.figures)

    def all_figures(self) -> dict[str, Figure]:
        return {k: f for fs in self.figures.values() for k, f in fs.items()}

    def replicates(self) -> int:
        """Replicate runs of each study in this run (``perfkit run --repeat``)."""
        return int(self.info.get("repeat") or 1)

    def status(self) -> dict[str, str]:
        """Each study's status in run.json; "running" only while the run's owner is alive."""
        alive = owner_alive(self.info.get("owner"))
        out = {}
        for s, st in (self.info.get("studies") or {}).items():
            if isinstance(st, dict):
                v = str(st.get("status", "?"))
                out[s] = "interrupted (owner died)" if v == "running" and not alive else v
        return out


def study_dirs(path: Path) -> list[Path]:
    """The study directories of a run (those with recorded trials), or of a saved baseline (figures and manifest
    only)."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and ((p / "trials.jsonl").is_file() or (
        (p / FILE_NAME).is_file() and (p / "manifest.json").is_file())))


def load(run_dir: str | Path) -> Run:
    """Open a run for comparison. PerfkitError, naming the path, when it is not a perfkit run, a study's
    manifest is missing or damaged, or its figures were never computed; unreadable data lines are warnings."""
    path = Path(run_dir)
    if not path.exists():
        raise PerfkitError(f"{path}: no such run directory")
    if not path.is_dir():
        raise PerfkitError(f"{path}: not a directory; give a run directory such as results/<run-id>")
    dirs = study_dirs(path)
    if not dirs:
        why = "it has a run.json but no study has recorded data yet" if (path / "run.json").exists() else \
            "no <study>/trials.jsonl in it"
        raise PerfkitError(f"{path} is not a perfkit run ({why})")
    figures, manifests, warnings = {}, {}, []
    for d in dirs:
        s = d.name
        data = runload.load(d, ("trials", "events", "manifest"))
        manifests[s] = checked_manifest(d / runload.MANIFEST, s, data)
        fpath = d / FILE_NAME
        if not fpath.is_file():
            raise PerfkitError(f"{fpath} is missing: the {s} figures were never computed; `perfkit report {path}` "
                               "computes them from the recorded data")
        try:
            figures[s] = FigureSet.read(fpath)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PerfkitError(f"{fpath} is damaged ({e}); `perfkit report {path}` computes it again") from None
        warnings += [f"Damaged data: {path.name}/{s}/{msg}" for msg in data.damage]
    return Run(path, figures, manifests, read_info(path), warnings)


def checked_manifest(mpath: Path, study: str, data: runload.StudyData) -> dict:
    """The study's manifest as read, or PerfkitError naming the path: a comparison without provenance would
    compare numbers whose engine, host and models are unknown."""
    if data.manifest_missing:
        raise PerfkitError(f"{mpath} is missing: the provenance of the {study} data (engine, versions, host, "
                           "models) is unknown, so the run cannot be compared")
    if data.manifest_problem:
        raise PerfkitError(f"{mpath} is damaged: {data.manifest_problem}")
    manifest = data.manifest
    bad = [k for k in ("host", "backend", "models", "params") if k in manifest and not isinstance(manifest[k], dict)]
    if bad:
        raise PerfkitError(f"{mpath} is damaged: {', '.join(bad)} should be JSON objects")
    return manifest


def read_info(path: Path) -> dict[str, Any]:
    """run.json when readable (name of the parameters, creation time, each study's status), else {}."""
    try:
        info = json.loads((path / "run.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}
