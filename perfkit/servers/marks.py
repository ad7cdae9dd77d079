"""The lines perfkit writes into a server log it keeps (a server it started): when the server was started and
when it first answered, in wall-clock seconds, so the server's own relative log times can be put on the run's
clock. Any program's name may stand in the mark; readers accept them all."""

from __future__ import annotations

import re

_START = re.compile(r"^# perfkit: (?P<what>[\w.-]+) started at unix (?P<t>[0-9.]+)\s*$")
_READY = re.compile(r"^# perfkit: (?P<what>[\w.-]+) answered /health at unix (?P<t>[0-9.]+)\s*$")


def start_line(program: str, wall_unix_s: float) -> str:
    return f"# perfkit: {program} started at unix {wall_unix_s:.6f}\n"


def ready_line(program: str, wall_unix_s: float) -> str:
    return f"# perfkit: {program} answered /health at unix {wall_unix_s:.6f}\n"


def started_at(line: str) -> float | None:
    """The wall time of a start mark; None when ``line`` is not one."""
    m = _START.match(line)
    return float(m.group("t")) if m else None


def ready_at(line: str) -> float | None:
    """The wall time of a ready mark; None when ``line`` is not one."""
    m = _READY.match(line)
    return float(m.group("t")) if m else None
