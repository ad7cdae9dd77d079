"""The clocks: one monotonic client clock for every timestamp perfkit takes, and UTC wall time for records."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone, tzinfo


def now_ns() -> int:
    """The one client clock: ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux, ns): the same for every
    thread and process, and the one the samplers use."""
    return time.perf_counter_ns()


def utc_now() -> str:
    """Wall time in UTC, ISO 8601 to the second: when something began or ended, for people."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_tz(text: str) -> tzinfo:
    """A time zone as a parameter file gives it: ``UTC``, an IANA name (``Europe/Berlin``) or an offset
    (``+02:00``, ``-0530``); ValueError naming what is allowed."""
    import re
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    t = str(text).strip()
    if t.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", t)
    if m:
        minutes = int(m[2]) * 60 + int(m[3])
        if minutes > 14 * 60:
            raise ValueError(f"offset {t!r} is beyond ±14:00")
        return timezone((1 if m[1] == "+" else -1) * timedelta(minutes=minutes))
    try:
        return ZoneInfo(t)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {t!r}; give UTC, an IANA name such as Europe/Berlin, or an offset "
                         "such as +02:00") from None
