"""JupyterLab on the study notebooks: its command line, and a save hook that keeps ``notebooks/`` as stored.

Opening a notebook starts its kernel, and JupyterLab then writes the kernel's Python version into the notebook's
metadata and autosaves it; running cells adds outputs and counters. The study notebooks are sources (papermill
executes copies into each run's directory), so a save into ``notebooks/`` keeps what a person wrote (cells, their
sources and tags) and drops what a session adds: outputs, execution counts, per-cell timings and UI state, the
kernel's version. Opening or running a notebook there leaves ``git status`` clean.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

SOURCE_DIR = "notebooks"
KEPT_CELL_METADATA = ("tags",)  # `parameters`, which papermill needs
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def clean(nb: dict[str, Any]) -> dict[str, Any]:
    """A notebook as stored: each cell's type, id, source and tags; no outputs, counts or session metadata."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"] = {k: v for k, v in (cell.get("metadata") or {}).items() if k in KEPT_CELL_METADATA}
    meta = {k: v for k, v in (nb.get("metadata") or {}).items() if k in KEPT_NOTEBOOK_METADATA}
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"] = {k: v for k, v in meta["language_info"].items() if k != "version"}
    nb["metadata"] = meta
    return nb


def pre_save(model: dict[str, Any], path: str, **_: Any) -> None:
    """Jupyter's ``ContentsManager.pre_save_hook``: a notebook saved under ``notebooks/`` is saved clean."""
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict) \
            and Path(str(path).lstrip("/")).parts[:1] == (SOURCE_DIR,):
        clean(model["content"])


def command(project: Path, args: list[str]) -> list[str]:
    """``python -m jupyterlab`` rooted at the project (so ``results/`` is reachable beside ``notebooks/``, where
    it opens), with the save hook; ``args`` go to Jupyter as given."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={project}",
           "--LabApp.default_url=/lab/tree/" + SOURCE_DIR,
           f"--ContentsManager.pre_save_hook={__name__}.pre_save"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # jupyter refuses root otherwise; most containers run as root
    return cmd + list(args)
