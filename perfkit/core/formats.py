"""The on-disk format of a run store, its version, and the upgrade of every earlier version to today's shape.

Each row of ``trials.jsonl``, ``resources.jsonl``, ``events.jsonl`` and ``samples.jsonl`` carries the format it
was written in (``"_v": 2``), and ``manifest.json`` carries ``"store_format": 2``. A version per row, not a header
line, because the files are appended to by one run after another: a run of an older perfkit resumed by this one
holds rows of both formats, and a row stays readable whatever was appended (or torn off) after it. A row or
manifest without a version was written before versions existed: version 1.

Reading upgrades each row in memory, one version at a time, to the current shape (the files on disk are never
rewritten: a run stays what it was). A version newer than this perfkit's is refused, naming it, instead of
being read by luck.

Version history:

1. Runs made before versions existed: no version key anywhere (``tests/data/runs`` keeps one).
2. Versions on every row and the manifest; events written through their declared classes
   (:mod:`perfkit.core.events`), two fields renamed for their units: ``read_bandwidth.seconds`` → ``read_s``,
   ``idle_baseline.seconds`` → ``duration_s``.
"""

from __future__ import annotations

from typing import Any, Callable

from perfkit.core.errors import PerfkitError

FORMAT = 2  # the format this perfkit writes
ROW_KEY = "_v"  # each JSONL row's format version (a leading underscore: the store's own, never a measured field)
MANIFEST_KEY = "store_format"
FILES = ("trials", "resources", "events", "samples")  # the JSONL files of a study directory, by stem

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]


class NewerFormat(PerfkitError):
    """Data written by a newer perfkit than this one: its shape is not known here."""


def _same(row: dict[str, Any]) -> dict[str, Any]:
    return row


# Renamed event fields, version 1 → 2: (kind, old name) → new name.
_EVENT_RENAMES_1 = {("read_bandwidth", "seconds"): "read_s", ("idle_baseline", "seconds"): "duration_s"}


def _events_1_to_2(row: dict[str, Any]) -> dict[str, Any]:
    kind = row.get("kind")
    for (k, old), new in _EVENT_RENAMES_1.items():
        if kind == k and old in row and new not in row:
            row[new] = row.pop(old)
    return row


# file → {version v: the step that turns a row of version v into one of version v + 1}
_STEPS: dict[str, dict[int, Upgrade]] = {
    "trials": {1: _same},
    "resources": {1: _same},
    "events": {1: _events_1_to_2},
    "samples": {1: _same},
}


def stamp(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as written by this perfkit: its format version first."""
    return {ROW_KEY: FORMAT, **row}


def version(value: Any, where: str) -> int:
    """A version read from disk: absent is 1; NewerFormat for one this perfkit does not know."""
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PerfkitError(f"{where}: store format {value!r} is not a version (a whole number ≥ 1)")
    if value > FORMAT:
        raise NewerFormat(f"{where} was written by a newer perfkit (store format {value}; this perfkit reads "
                          f"formats 1 to {FORMAT}): read it with that perfkit, or upgrade this one")
    return value


def upgrade_row(file: str, row: dict[str, Any], where: str) -> tuple[dict[str, Any], int]:
    """(the row in the current shape without its version key, the version it was written in)."""
    v = version(row.pop(ROW_KEY, None), where)
    for step in range(v, FORMAT):
        row = _STEPS[file][step](row)
    return row, v


def upgrade_manifest(manifest: dict[str, Any], where: str) -> tuple[dict[str, Any], int]:
    """(the manifest in the current shape, stamped with the current format; the version it was written in).
    Version 1 → 2 only adds the version."""
    v = version(manifest.get(MANIFEST_KEY), where)
    return {**manifest, MANIFEST_KEY: FORMAT}, v
