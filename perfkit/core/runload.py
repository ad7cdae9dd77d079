"""Reading a study directory back: the one function every reader of recorded data goes through (the
running study's store and its analysis, so ``perfkit report``; ``perfkit compare``, the gate and the history
through ``perfkit.compare.runs``; the damage checks of ``perfkit.run.rundir``), whatever store format the run
was written in. Each row comes back in the current shape (:mod:`perfkit.core.formats`); the lines that
can't be read, and a manifest that is missing or damaged, are said, never guessed around."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from perfkit.core import formats
from perfkit.core.jsonl import JsonlLog
from perfkit.core.records import RequestRecord

# The columns every trial row can have: what identifies the trial, and the request's record.
TRIAL_COLUMNS = ("trial_id", "variant", "model", "cache_state", "rep", "warmup", "ok", "error",
                 *RequestRecord.__dataclass_fields__)
MANIFEST = "manifest.json"
PARTS = (*formats.FILES, "manifest")


def log_path(study_dir: Path, file: str) -> Path:
    return Path(study_dir) / f"{file}.jsonl"


@dataclass
class StudyData:
    """A study directory as read: every row in the current shape (trials: every attempt), in file order.

    ``damage``: one sentence per line that could not be read. ``manifest_missing`` / ``manifest_problem``: no
    manifest, or one that is not a JSON object (why); the reader decides whether that stops it. ``formats``:
    each file's store format versions as found on disk (1: a run made before versions)."""

    dir: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    manifest_missing: bool = False
    manifest_problem: str | None = None
    damage: list[str] = field(default_factory=list)
    formats: dict[str, list[int]] = field(default_factory=dict)

    def trials_frame(self, all_attempts: bool = False) -> pd.DataFrame:
        """One row per trial, its latest attempt (a failed trial measured again keeps its failed row on disk);
        ``all_attempts=True`` gives every row. Every column of a trial row is there, empty where no row has it,
        and each trial's resource figures (``res_*``, written after its series) are joined in."""
        df = pd.DataFrame(self.trials)
        df = df.reindex(columns=list(df.columns) + [c for c in TRIAL_COLUMNS if c not in df.columns])
        if self.resources and "trial_id" in df:
            r = pd.DataFrame(self.resources).drop_duplicates("trial_id", keep="last").set_index("trial_id")
            for col in r.columns:
                vals = df["trial_id"].map(r[col])
                df[col] = vals if col not in df else df[col].where(df[col].notna(), vals)
        if all_attempts or "trial_id" not in df or not df["trial_id"].duplicated().any():
            return df
        return df[~df["trial_id"].duplicated(keep="last") | df["trial_id"].isna()].reset_index(drop=True)

    def events_frame(self) -> pd.DataFrame:
        """Every event, a ``kind`` column and the fields; read a kind with ``perfkit.core.events.events_of``."""
        return pd.DataFrame(self.events)

    def samples_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.samples)


def read_rows(log: JsonlLog, file: str) -> tuple[list[dict[str, Any]], list[str], list[int]]:
    """(rows in the current shape, damage, the format versions found) of one JSONL file."""
    rows, versions = [], set()
    for n, row in enumerate(log.read(), 1):
        row, v = formats.upgrade_row(file, row, f"{log.path} row {n}")
        rows.append(row)
        versions.add(v)
    return rows, list(log.damage), sorted(versions)


@dataclass
class ManifestRead:
    """``manifest.json`` as read: the manifest in the current shape (None when there is none or it is damaged),
    what is wrong with it (None when nothing), and the store format it was written in."""

    manifest: dict[str, Any] | None
    problem: str | None = None
    version: int | None = None


def read_manifest(path: str | Path) -> ManifestRead:
    path = Path(path)
    if not path.is_file():
        return ManifestRead(None)
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        return ManifestRead(None, f"unreadable ({e})")
    except ValueError as e:
        return ManifestRead(None, f"not valid JSON ({e})")
    if not isinstance(m, dict):
        return ManifestRead(None, f"expected a JSON object, found {type(m).__name__}")
    m, v = formats.upgrade_manifest(m, str(path))
    return ManifestRead(m, None, v)


def load(study_dir: str | Path, parts: Iterable[str] = PARTS, *,
         logs: Mapping[str, JsonlLog] | None = None) -> StudyData:
    """Read ``parts`` (trials, resources, events, samples, manifest) of a study directory. ``logs``: the open
    logs of a store to read through (their ``damage`` is then that of this read). NewerFormat when a file was
    written by a newer perfkit."""
    study_dir = Path(study_dir)
    out = StudyData(study_dir)
    for part in parts:
        if part == "manifest":
            m = read_manifest(study_dir / MANIFEST)
            out.manifest, out.manifest_problem = m.manifest or {}, m.problem
            out.manifest_missing = m.manifest is None and m.problem is None
            if m.version is not None:
                out.formats["manifest"] = [m.version]
            continue
        if part not in formats.FILES:
            raise ValueError(f"no part {part!r} of a study directory; there are: {', '.join(PARTS)}")
        log = (logs or {}).get(part) or JsonlLog(log_path(study_dir, part))
        rows, damage, versions = read_rows(log, part)
        setattr(out, part, rows)
        out.damage += damage
        if versions:
            out.formats[part] = versions
    return out
