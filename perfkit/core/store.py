"""The results store: one directory per study of a run.

``trials.jsonl`` gets one line per trial, flushed and fsynced as each completes, so a crash or a
kill loses nothing already measured; ``samples.jsonl`` holds resource samples on the same clock;
``events.jsonl`` what happened (each kind declared in :mod:`perfkit.core.events`); ``manifest.json`` says
how the run was made (pyperf-style metadata); ``*.parquet`` are written when the run ends. Every row and the
manifest carry the store format they were written in (:mod:`perfkit.core.formats`). Reading back goes through
:func:`perfkit.core.runload.load` and gives pandas DataFrames in the current shape, whatever the format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from perfkit.core import formats, runload
from perfkit.core.errors import PerfkitError
from perfkit.core.events import Event, validate
from perfkit.core.jsonl import JsonlLog, json_default
from perfkit.core.runload import TRIAL_COLUMNS
from perfkit.core.secrets import redact

# JsonlLog and TRIAL_COLUMNS live in jsonl and runload now; importing them from here still works.
__all__ = ["JsonlLog", "RunStore", "TRIAL_COLUMNS"]


class RunStore:
    """A study's directory: trials, samples, events and manifest. Safe to open again to resume (a run of an
    earlier store format too: each row says its own format, so old and new rows sit in one file)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trials_log = JsonlLog(runload.log_path(self.dir, "trials"))
        self.samples_log = JsonlLog(runload.log_path(self.dir, "samples"))
        self.events_log = JsonlLog(runload.log_path(self.dir, "events"))
        # Resource windows of load-series requests, computed after the series (see Runner.closed_loop).
        self.resources_log = JsonlLog(runload.log_path(self.dir, "resources"))

    # ---- writing: every row stamped with the store format it is written in ---------------------
    def append_trial(self, row: dict) -> None:
        self.trials_log.append(formats.stamp(row))

    def extend_trials(self, rows: Iterable[dict]) -> None:
        """Many trials at once (a finished load series): one write, one fsync."""
        self.trials_log.extend(formats.stamp(r) for r in rows)

    def append_resources(self, rows: Iterable[dict]) -> None:
        """Resource figures (``res_*``) for trials already stored, keyed by ``trial_id``."""
        self.resources_log.extend(formats.stamp(r) for r in rows)

    def append_samples(self, rows: Iterable[dict]) -> None:
        self.samples_log.extend(formats.stamp(r) for r in rows)

    def emit(self, event: Event) -> None:
        """Record an event (a declared class of :mod:`perfkit.core.events`)."""
        self.events_log.append(formats.stamp(event.row()))

    def event(self, kind: str, **data: Any) -> None:
        """Record an event by its kind name: checked against its declaration (EventError for a kind or a field
        that is not declared), then written as :meth:`emit` writes it."""
        self.emit(validate(kind, data))

    def write_manifest(self, **fields: Any) -> dict:
        """Merge ``fields`` into manifest.json (secrets redacted) and return it; the manifest says its format."""
        manifest = self.manifest()
        manifest.update(fields)
        manifest[formats.MANIFEST_KEY] = formats.FORMAT
        tmp = self.dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(redact(manifest), default=json_default, indent=2))
        tmp.replace(self.dir / "manifest.json")
        return manifest

    def finalize(self) -> None:
        """Write parquet copies of the logs, in the current shape (the JSONL files stay the source of truth)."""
        data = self._load("trials", "samples")
        for name, rows in (("trials", data.trials), ("samples", data.samples)):
            if rows:
                df = pd.json_normalize(rows, max_level=0)
                try:
                    df.to_parquet(self.dir / f"{name}.parquet", index=False)
                except Exception:  # noqa: BLE001 - mixed-type columns: parquet is a convenience copy
                    df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(
                        self.dir / f"{name}.parquet", index=False)

    def nonce(self) -> str:
        """This run's prompt nonce: made once, kept in the run directory so a resume reuses it."""
        from perfkit.core.prompts import new_nonce

        path = self.dir / "nonce"
        if not path.exists():
            tmp = self.dir / "nonce.tmp"
            tmp.write_text(new_nonce())
            tmp.replace(path)
        return path.read_text().strip()

    # ---- reading: through runload, in the current shape ----------------------------------------
    def _load(self, *parts: str) -> runload.StudyData:
        logs = {"trials": self.trials_log, "samples": self.samples_log, "events": self.events_log,
                "resources": self.resources_log}
        return runload.load(self.dir, parts, logs=logs)

    def manifest(self) -> dict:
        """The manifest in the current shape; {} when there is none. PerfkitError when it is damaged."""
        m = runload.read_manifest(self.dir / runload.MANIFEST)
        if m.problem:
            raise PerfkitError(f"{self.dir / runload.MANIFEST} is damaged: {m.problem}")
        return m.manifest or {}

    def done_ids(self, retry_failed: bool | None = None) -> set[str]:
        """Trials not to measure again: every trial with a row; with ``retry_failed``, only those whose
        latest attempt succeeded. ``None`` follows ``perfkit run --retry-failed`` ($PERFKIT_RETRY_FAILED=1)."""
        if retry_failed is None:
            retry_failed = os.environ.get("PERFKIT_RETRY_FAILED") == "1"
        latest = {r["trial_id"]: r for r in self._load("trials").trials if "trial_id" in r}
        return {t for t, r in latest.items() if not retry_failed or r.get("ok", True) is not False}

    def trials(self, all_attempts: bool = False) -> pd.DataFrame:
        """One row per trial, its latest attempt (a failed trial measured again keeps its failed row on
        disk); ``all_attempts=True`` gives every row. Every column of a trial row is there, empty where no
        row has it (no trial yet, or every request failed before it had a time): an analysis never meets
        a missing column, only missing values."""
        return self._load("trials", "resources").trials_frame(all_attempts)

    def samples(self) -> pd.DataFrame:
        return self._load("samples").samples_frame()

    def events(self) -> pd.DataFrame:
        """Every event; read one kind with ``perfkit.core.events.events_of(store.events(), SomeEvent)``."""
        return self._load("events").events_frame()
