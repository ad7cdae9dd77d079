"""One run, one clock: each node's clock against the driver's, from round trips (the tightest kept).

A node's ``perf_counter`` (CLOCK_MONOTONIC) counts from its own boot, and its wall clock is only as good as
its NTP: every time a node reports is put on the run's clock by the offset measured here, and every figure
that crosses hosts can say how uncertain that is (half the tightest round trip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from perfkit.core.clock import now_ns


@dataclass
class ClockOffset:
    """A node's clocks against this process's.

    ``offset_ns``: the node's perf_counter − ours at one instant (ns); ``wall_offset_s``: the node's
    ``time.time()`` − ours (s); ``uncertainty_ns``: either is right within this (half the round trip it came
    from, ns); ``rtt_min_ns``/``rtt_median_ns``: the tightest and the median round trip of ``round_trips``.
    """

    node: str
    offset_ns: int
    wall_offset_s: float
    uncertainty_ns: int
    rtt_min_ns: int
    rtt_median_ns: int
    round_trips: int

    def to_run(self, t_node_ns: int) -> int:
        """A node's perf_counter stamp on the run's (this process's) clock."""
        return t_node_ns - self.offset_ns

    def to_node(self, t_run_ns: int) -> int:
        return t_run_ns + self.offset_ns

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "uncertainty_s": self.uncertainty_ns * 1e-9}


def measure_offset(node: str, probe: Callable[[], tuple[int, int]], round_trips: int = 15) -> ClockOffset:
    """``probe()`` asks the node for (its perf_counter ns, its time.time_ns()) and waits for the answer. The node
    read its clocks somewhere inside the round trip; the midpoint is the best guess, off by at most half the
    trip, so the tightest trip wins (a slow one was queued, not measured)."""
    import time

    best = None
    rtts = []
    for _ in range(round_trips):
        w0, t0 = time.time_ns(), now_ns()
        node_t, node_wall = probe()
        t1, w1 = now_ns(), time.time_ns()
        rtt = t1 - t0
        rtts.append(rtt)
        if best is None or rtt < best[0]:
            best = (rtt, node_t - (t0 + t1) // 2, (node_wall - (w0 + w1) / 2) * 1e-9)
    assert best is not None
    rtts.sort()
    return ClockOffset(node, best[1], best[2], best[0] // 2 + 1, best[0], rtts[len(rtts) // 2], len(rtts))
