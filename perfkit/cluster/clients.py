"""Load from several client nodes: a series' shares run by request-engine actors on the nodes that joined as
``perfkit-client:NAME``, started at one agreed instant, their stamps put on the run's clock, merged.

The split is the request engine's own (:func:`perfkit.client.loadgen.share_specs`): a closed loop divides
its streams, an open loop deals its schedule so the merged sends are exactly the schedule asked for. Each
client's self-check is kept in the merge; the series is client-bound if any client was.
"""

from __future__ import annotations

import time
from typing import Any

from perfkit.client.loadgen import run_share
from perfkit.client.stream import Capture
from perfkit.cluster.agent import node_facts
from perfkit.cluster.clock import ClockOffset, measure_offset
from perfkit.core.clock import now_ns
from perfkit.core.errors import PerfkitError

START_LEAD_S = 2.0  # the agreed start is this far ahead: every client has its share (and its imports) by then


class ClientNode:
    """The request engine on a client node (a Ray actor)."""

    def __init__(self, name: str):
        self.name = name

    def hello(self) -> dict[str, Any]:
        return node_facts(self.name)

    def clock(self) -> tuple[int, int]:
        return now_ns(), time.time_ns()

    def run(self, spec: dict) -> tuple[list[Capture], dict]:
        caps, check = run_share(spec)
        return caps, {**check, "node": self.name}


def _to_run(cap: Capture, clock: ClockOffset) -> Capture:
    for k in ("t_scheduled_ns", "t_start_ns", "t_send_ns", "t_headers_ns", "t_eof_ns"):
        v = getattr(cap, k)
        if v is not None:
            setattr(cap, k, clock.to_run(v))
    cap.chunk_times_ns = [clock.to_run(t) for t in cap.chunk_times_ns]
    cap.wall_start_unix_s -= clock.wall_offset_s
    return cap


class ClientShares:
    """A ``perfkit.client.loadgen.Shares`` over client nodes: (name, actor, clock) each."""

    start_lead_s = START_LEAD_S

    def __init__(self, clients: list[tuple[str, Any, ClockOffset]], timeout_s: float):
        self.clients = clients
        self.parts = len(clients)
        self.timeout_s = timeout_s
        self.lost: dict[int, str] = {}
        self.dropped: dict[str, str] = {}  # client nodes lost in an earlier series → why; later series skip them

    def run(self, specs: list[dict]) -> list[tuple[list[Capture], dict] | None]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        self.lost = {}
        if not self.clients:
            raise PerfkitError("no client node is left to send load: " + "; ".join(self.dropped.values()))
        self.clients = [(name, actor, self._fresh(name, actor, clock)) for name, actor, clock in self.clients]
        start = now_ns() + int(START_LEAD_S * 1e9)
        refs = [actor.run.remote({**spec, "start_ns": clock.to_node(start)})
                for (_, actor, clock), spec in zip(self.clients, specs)]
        out: list[tuple[list[Capture], dict] | None] = []
        for k, ((name, _, clock), ref) in enumerate(zip(self.clients, refs)):
            try:
                caps, check = ray.get(ref, timeout=self.timeout_s)
            except (RayActorError, GetTimeoutError) as e:
                self.lost[k] = f"client node {name} lost: {str(e).splitlines()[0][:200]}"
                out.append(None)
                continue
            out.append(([_to_run(c, clock) for c in caps], {**check, "clock_uncertainty_ns": clock.uncertainty_ns}))
        # A node that died stays dead to this run: the next series is split over the ones left, not dealt to it.
        for k in sorted(self.lost, reverse=True):
            name = self.clients[k][0]
            self.dropped[name] = self.lost[k]
            del self.clients[k]
        self.parts = len(self.clients)
        return out

    @staticmethod
    def _fresh(name: str, actor, clock: ClockOffset) -> ClockOffset:
        """Each series with fresh offsets: two hosts' clocks drift apart over a long run. A client that can't
        answer keeps its last one (its share then fails, and is recorded as lost)."""
        import ray

        try:
            return measure_offset(name, lambda: ray.get(actor.clock.remote(), timeout=30), clock.round_trips)
        except Exception:  # noqa: BLE001
            return clock

    def describe(self) -> list[dict[str, Any]]:
        return [{"node": name, "clock": clock.as_dict()} for name, _, clock in self.clients]
