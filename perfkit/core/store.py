"""The results store: one directory per run.

``trials.jsonl`` gets one line per trial, flushed and fsynced as each completes, so a crash or a
kill loses nothing already measured; ``samples.jsonl`` holds resource samples on the same clock;
``manifest.json`` says how the run was made (pyperf-style metadata); ``*.parquet`` are written
when the run ends. Reading back gives pandas DataFrames.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from perfkit.core.records import RequestRecord
from perfkit.core.secrets import redact

_log = logging.getLogger("perfkit.store")
# The columns every trial row can have: what identifies the trial, and the request's record.
TRIAL_COLUMNS = ("trial_id", "variant", "model", "cache_state", "rep", "warmup", "ok", "error",
                 *RequestRecord.__dataclass_fields__)

def _default(o: Any) -> Any:
    if hasattr(o, "as_dict"):
        return o.as_dict()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    return str(o)


class JsonlLog:
    """Append-only JSON lines, each one flushed and fsynced before ``append`` returns.

    A last line torn by a kill mid-write is repaired before the next append, never appended to: a
    fragment that is a whole JSON object just gets its newline; any other fragment is moved to
    ``<name>.torn`` (one JSON line per repair: when, offset, bytes, the fragment), cut off, and a
    warning is logged. ``read`` skips unreadable lines and says which in ``damage``.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.damage: list[str] = []  # from the last read(): one sentence per unreadable line
        self.repairs: list[dict] = []  # torn lines this instance moved aside

    @property
    def torn_path(self) -> Path:
        return self.path.with_name(self.path.name + ".torn")

    def _write(self, text: str) -> None:
        with self._lock:
            self._repair()
            with open(self.path, "a") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    def _repair(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos, cut = size, 0
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                f.seek(pos)
                i = f.read(step).rfind(b"\n")
                if i >= 0:
                    cut = pos + i + 1
                    break
            f.seek(cut)
            fragment = f.read()
            try:
                whole = isinstance(json.loads(fragment), dict)
            except ValueError:
                whole = False
            if whole:  # killed between the object and its newline: the row is complete, keep it
                f.seek(size)
                f.write(b"\n")
            else:
                entry = {"moved_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "file": self.path.name, "offset": cut, "bytes": len(fragment),
                         "fragment": fragment.decode("utf-8", "replace")}
                with open(self.torn_path, "a") as t:
                    t.write(json.dumps(entry) + "\n")
                    t.flush()
                    os.fsync(t.fileno())
                f.truncate(cut)
                self.repairs.append(entry)
            f.flush()
            os.fsync(f.fileno())
        if not whole:
            _log.warning("%s: its last line was torn (a run killed mid-write): %d bytes moved to %s before "
                         "appending", self.path, len(fragment), self.torn_path.name)

    def append(self, row: dict) -> None:
        self._write(json.dumps(redact(row), default=_default, allow_nan=True) + "\n")

    def extend(self, rows: Iterable[dict]) -> None:
        lines = "".join(json.dumps(redact(r), default=_default) + "\n" for r in rows)
        if lines:
            self._write(lines)

    def scan(self) -> tuple[list[dict], list[str]]:
        """(rows, damage): every readable row, and one sentence per line that could not be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        rows, damage = [], []
        lines = data.split(b"\n")
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                row = None
            why = _wrong_type(row) if isinstance(row, dict) and self.path.name == "trials.jsonl" else None
            if why:
                damage.append(f"{self.path.name} line {n}: {why}: skipped, so its row is missing from every figure")
            elif isinstance(row, dict):
                rows.append(row)
            elif n == len(lines):  # no newline after it: a write cut off by a kill
                damage.append(f"{self.path.name}: the last line (line {n}) is torn, {len(raw)} bytes cut off by a "
                              "kill mid-write: skipped (resume the run to measure it again)")
            else:
                damage.append(f"{self.path.name} line {n}: not a JSON object ({raw[:40]!r}...): skipped, "
                              "so its row is missing from every figure")
        return rows, damage

    def read(self) -> list[dict]:
        rows, self.damage = self.scan()
        return rows


def _numeric_fields() -> frozenset[str]:
    """The request record's fields that hold a number (or nothing)."""
    import dataclasses

    out = set()
    for f in dataclasses.fields(RequestRecord):
        t = str(f.type)
        if ("float" in t or "int" in t) and not any(w in t for w in ("list", "str", "dict", "bool")):
            out.add(f.name)
    return frozenset(out)


_NUMERIC = _numeric_fields()
_NUMERIC_SUFFIXES = ("_s", "_ns", "_bytes")  # a time, a clock stamp or a size: a number, or a list of them


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _wrong_type(row: dict) -> str | None:
    """Why a trial row can't be read as one (a field of the wrong type: ``ok: "no"``, ``ttft_s: "fast"``), or None."""
    ok = row.get("ok", True)
    if not isinstance(ok, bool):
        return f"ok is {str(ok)[:20]!r}, not true or false"
    for k, v in row.items():
        if v is None:
            continue
        if k in _NUMERIC and not _is_number(v):
            return f"{k} is {str(v)[:20]!r}, not a number"
        if k not in _NUMERIC and k.endswith(_NUMERIC_SUFFIXES) and not (
                _is_number(v) or (isinstance(v, list) and all(_is_number(x) or x is None for x in v))):
            return f"{k} is {str(v)[:20]!r}, not a number"
    return None


class RunStore:
    """A run's directory: trials, samples, events and manifest. Safe to open again to resume."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trials_log = JsonlLog(self.dir / "trials.jsonl")
        self.samples_log = JsonlLog(self.dir / "samples.jsonl")
        self.events_log = JsonlLog(self.dir / "events.jsonl")
        # Resource windows of load-series requests, computed after the series (see Runner.closed_loop).
        self.resources_log = JsonlLog(self.dir / "resources.jsonl")

    # ---- writing -------------------------------------------------------------------------------
    def append_trial(self, row: dict) -> None:
        self.trials_log.append(row)

    def extend_trials(self, rows: Iterable[dict]) -> None:
        """Many trials at once (a finished load series): one write, one fsync."""
        self.trials_log.extend(rows)

    def append_resources(self, rows: Iterable[dict]) -> None:
        """Resource figures (``res_*``) for trials already stored, keyed by ``trial_id``."""
        self.resources_log.extend(rows)

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

    def nonce(self) -> str:
        """This run's prompt nonce: made once, kept in the run directory so a resume reuses it."""
        from perfkit.core.prompts import new_nonce

        path = self.dir / "nonce"
        if not path.exists():
            tmp = self.dir / "nonce.tmp"
            tmp.write_text(new_nonce())
            tmp.replace(path)
        return path.read_text().strip()

    # ---- reading -------------------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.dir / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def done_ids(self, retry_failed: bool | None = None) -> set[str]:
        """Trials not to measure again: every trial with a row; with ``retry_failed``, only those whose
        latest attempt succeeded. ``None`` follows ``perfkit run --retry-failed`` ($PERFKIT_RETRY_FAILED=1)."""
        if retry_failed is None:
            retry_failed = os.environ.get("PERFKIT_RETRY_FAILED") == "1"
        latest = {r["trial_id"]: r for r in self.trials_log.read() if "trial_id" in r}
        return {t for t, r in latest.items() if not retry_failed or r.get("ok", True) is not False}

    def trials(self, all_attempts: bool = False) -> pd.DataFrame:
        """One row per trial, its latest attempt (a failed trial measured again keeps its failed row on
        disk); ``all_attempts=True`` gives every row. Every column of a trial row is there, empty where no
        row has it (no trial yet, or every request failed before it had a time): an analysis never meets
        a missing column, only missing values."""
        df = pd.DataFrame(self.trials_log.read())
        df = df.reindex(columns=list(df.columns) + [c for c in TRIAL_COLUMNS if c not in df.columns])
        res = self.resources_log.read()
        if res and "trial_id" in df:
            r = pd.DataFrame(res).drop_duplicates("trial_id", keep="last").set_index("trial_id")
            for col in r.columns:
                vals = df["trial_id"].map(r[col])
                df[col] = vals if col not in df else df[col].where(df[col].notna(), vals)
        if all_attempts or "trial_id" not in df or not df["trial_id"].duplicated().any():
            return df
        return df[~df["trial_id"].duplicated(keep="last") | df["trial_id"].isna()].reset_index(drop=True)

    def samples(self) -> pd.DataFrame:
        return pd.DataFrame(self.samples_log.read())

    def events(self) -> pd.DataFrame:
        return pd.DataFrame(self.events_log.read())
