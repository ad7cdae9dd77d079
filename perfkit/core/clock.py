"""The clocks: one monotonic client clock for every timestamp perfkit takes, and UTC wall time for records."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def now_ns() -> int:
    """The one client clock: ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux, ns): the same for every
    thread and process, and the one the samplers use."""
    return time.perf_counter_ns()


def utc_now() -> str:
    """Wall time in UTC, ISO 8601 to the second: when something began or ended, for people."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
