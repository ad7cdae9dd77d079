"""The results store: one directory per run.

``trials.jsonl`` gets one line per trial, flushed and fsynced as each completes, so a crash or a
kill loses nothing already measured; ``samples.jsonl`` holds resource samples on the same clock;
``manifest.json`` says how the run was made (pyperf-style metadata); ``*.parquet`` are written
when the run ends. Reading back gives pandas DataFrames.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

# Whole key names (or their last part): "api_key", "access_token", "headers"; not "output_tokens".
_SECRET = re.compile(r"^(.*[-_.])?(api[-_]?key|apikey|key|token|secret|password|passwd|authorization|auth|"
                     r"cookie|bearer|headers?)$", re.I)
_SECRET_VALUE = re.compile(r"^\s*(bearer|basic)\s+\S+", re.I)
REDACTED = "***"


def redact(obj: Any) -> Any:
    """Replace the value of every key that looks like a secret, at any depth."""
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET.search(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and _SECRET_VALUE.match(obj):
        return REDACTED
    return obj


def _default(o: Any) -> Any:
    if hasattr(o, "as_dict"):
        return o.as_dict()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    return str(o)


class JsonlLog:
    """Append-only JSON lines, each one flushed and fsynced before ``append`` returns."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def append(self, row: dict) -> None:
        line = json.dumps(redact(row), default=_default, allow_nan=True) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def extend(self, rows: Iterable[dict]) -> None:
        lines = "".join(json.dumps(redact(r), default=_default) + "\n" for r in rows)
        if not lines:
            return
        with self._lock, open(self.path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # A run killed mid-write leaves at most one torn last line: skip it.
                    continue
        return rows


class RunStore:
    """A run's directory: trials, samples, events and manifest. Safe to open again to resume."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trials_log = JsonlLog(self.dir / "trials.jsonl")
        self.samples_log = JsonlLog(self.dir / "samples.jsonl")
        self.events_log = JsonlLog(self.dir / "events.jsonl")

    # ---- writing -------------------------------------------------------------------------------
    def append_trial(self, row: dict) -> None:
        self.trials_log.append(row)

    def append_samples(self, rows: Iterable[dict]) -> None:
        self.samples_log.extend(rows)

    def event(self, kind: str, **data: Any) -> None:
        self.events_log.append({"kind": kind, **data})

    def write_manifest(self, **fields: Any) -> dict:
        """Merge ``fields`` into manifest.json (secrets redacted) and return it."""
        manifest = self.manifest()
        manifest.update(fields)
        tmp = self.dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(redact(manifest), default=_default, indent=2))
        tmp.replace(self.dir / "manifest.json")
        return manifest

    def finalize(self) -> None:
        """Write parquet copies of the logs (the JSONL files stay the source of truth)."""
        for name, log in (("trials", self.trials_log), ("samples", self.samples_log)):
            rows = log.read()
            if rows:
                df = pd.json_normalize(rows, max_level=0)
                try:
                    df.to_parquet(self.dir / f"{name}.parquet", index=False)
                except Exception:  # noqa: BLE001 - mixed-type columns: parquet is a convenience copy
                    df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(
                        self.dir / f"{name}.parquet", index=False)

    # ---- reading -------------------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.dir / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def done_ids(self) -> set[str]:
        return {r["trial_id"] for r in self.trials_log.read() if "trial_id" in r}

    def trials(self) -> pd.DataFrame:
        return pd.DataFrame(self.trials_log.read())

    def samples(self) -> pd.DataFrame:
        return pd.DataFrame(self.samples_log.read())

    def events(self) -> pd.DataFrame:
        return pd.DataFrame(self.events_log.read())
