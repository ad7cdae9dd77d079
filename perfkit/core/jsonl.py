"""A run store's append-only JSON lines files: each row on disk (flushed and fsynced) before ``append``
returns, a line torn by a kill repaired before the next append, unreadable lines reported as damage.

Rows are written and read here as they are; their format version and the upgrade of older rows are
:mod:`perfkit.core.formats`' job, reading a whole study directory :mod:`perfkit.core.runload`'s.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from perfkit.core.records import RequestRecord
from perfkit.core.secrets import redact

_log = logging.getLogger("perfkit.store")


def json_default(o: Any) -> Any:
    """What ``json.dumps`` writes for a value it does not know: a record's dict, a path, a numpy scalar."""
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
        self._write(json.dumps(redact(row), default=json_default, allow_nan=True) + "\n")

    def extend(self, rows: Iterable[dict]) -> None:
        lines = "".join(json.dumps(redact(r), default=json_default) + "\n" for r in rows)
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
