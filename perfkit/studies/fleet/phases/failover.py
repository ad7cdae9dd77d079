"""A server killed mid-run: a series through the proxy during which one server perfkit started is killed (kill -9,
as a crash comes), then revived; what failed, and how long the proxy kept trying the dead server (its access log)."""

from __future__ import annotations

import math
import threading
from typing import Any

import pandas as pd

from perfkit.core import events as E
from perfkit.analysis.requests import error_summary

from ..phase_run import PhaseRun
from ..records import phase_rows
from ..results import Failover
from ..upstreams import addresses


def measure(run: PhaseRun) -> None:
    victim = _victim(run)
    if victim is None:
        return
    kill = _Kill(run, victim)
    timer = None if run.proxy.live_responses else _kill_timer(run, kill)
    try:
        run.proxy.closed_loop(run.model, 2, run.cfg.failover_requests, series="failover/proxy", sampling=run.sampling,
                              prompt_words=run.cfg.prompt_words, on_response=kill.on_response,
                              tags={"phase": "failover", "target": "proxy", "victim": run.fleet.servers[victim].addr})
    except Exception:  # a failure: bring the server back for what follows; Ctrl-C goes straight to stop()
        if kill.killed:
            kill.revive()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if kill.killed:
        kill.revive()
        run.warm_all()


def _victim(run: PhaseRun) -> int | None:
    """The server to kill: one perfkit may kill (one it started), the last such; a user's own server never. None
    (the phase said skipped, and why) when there is none."""
    n = len(run.fleet.servers)
    victim = next((i for i in reversed(range(n)) if run.fleet.can_kill(i)), None) if n >= 2 else None
    if not run.fleet.managed or victim is None:
        run.skip("failover", "unknown, because " + (
            "there is only one server" if n < 2 else
            f"perfkit does not kill servers it did not start, and it started none of these {n} (give a host's "
            "`command` to have its agent start and own its server)" if victim is None else
            "perfkit does not change a proxy it did not start"))
        return None
    return victim


class _Kill:
    """The victim killed once, by whichever comes first: the response count or the timer."""

    def __init__(self, run: PhaseRun, victim: int) -> None:
        self.run, self.victim = run, victim
        self.responses = 0
        self.killed = False
        self._lock = threading.Lock()
        self.addrs = sorted(addresses(run.fleet.servers[victim].url))

    def once(self, why: str) -> None:
        with self._lock:
            if self.killed:
                return
            self.killed = True
        t = self.run.fleet.kill(self.victim)
        self.run.emit(E.ServerKilled, server=self.run.fleet.servers[self.victim].addr, server_addrs=self.addrs,
                       kill_t_ns=t, scheduled_by=why)

    def on_response(self, i: int, cap: Any) -> None:  # on the loop: a counter and, once, a kill(2)
        self.responses += 1
        if self.responses >= self.run.cfg.failover_kill_after:
            self.once(f"after {self.run.cfg.failover_kill_after} responses")

    def revive(self) -> None:
        self.run.fleet.revive(self.victim)
        self.run.emit(E.ServerRevived, server=self.run.fleet.servers[self.victim].addr)


def _kill_timer(run: PhaseRun, kill: _Kill) -> threading.Timer:
    """Responses from client nodes reach this process only after the series: the kill can't wait for them. It is
    set on the run's clock instead, at the time the first responses take (the fleet's warm requests so far), from
    the series' agreed start: while requests are in flight, as a crash would come."""
    e2e = warm_e2e_s(run)
    after = run.cfg.failover_kill_after
    delay = run.proxy.start_lead_s + after * e2e / 2  # two streams
    timer = threading.Timer(delay, kill.once, args=(f"{delay:.2f} s after the series was set off "
                                                     f"({after} × {e2e:.2f} s per request ÷ 2 streams)",))
    timer.daemon = True
    timer.start()
    return timer


def warm_e2e_s(run: PhaseRun) -> float:
    """The median whole-request time of the fleet's warm requests so far (1 s when there are none)."""
    rows = pd.DataFrame([r for r in run.ctx.store.trials_log.read() if r.get("ok") and not r.get("cold")])
    e2e = pd.to_numeric(rows.get("e2e_s", pd.Series(dtype=float)), errors="coerce").dropna() if len(rows) else []
    return float(e2e.median()) if len(e2e) else 1.0


def failover_summary(df: pd.DataFrame, ev: pd.DataFrame, access: list[dict[str, Any]]) -> Failover | None:
    """What a killed server cost: failed requests by class, retries the proxy made on another server,
    and how long the proxy kept trying the dead one (from nginx's access log). None: no failover phase."""
    all_rows = phase_rows(df, "failover")
    if all_rows.empty:
        return None
    kill = E.events_of(ev, E.ServerKilled)
    if kill.empty:
        return Failover(requests=len(all_rows), kill_reached=False)
    k = kill.iloc[-1]
    t_kill_wall = _kill_wall_s(k, ev)
    # nginx names the address it connected to; the URL may name the host: every address it resolved to counts.
    victim_addrs = set(k.get("server_addrs") if isinstance(k.get("server_addrs"), list) else []) | {k["server"]}
    rev = E.events_of(ev, E.ServerRevived)
    rev = rev[rev["wall_unix_s"] > t_kill_wall]
    t_end_wall = float(rev["wall_unix_s"].iloc[0]) if len(rev) else math.inf  # the same address serves again
    after = all_rows[all_rows["t_send_ns"] >= int(k["kill_t_ns"]) - int(30e9)]
    failed = all_rows[~all_rows["ok"].astype(bool)]
    # A try on the dead server ends after the kill (nginx logs $msec, in ms, at the request's end); one that ended
    # before it was served by the live server, not tried on a dead one.
    touched = [a for a in access if t_kill_wall - 0.001 <= a.get("msec", 0) <= t_end_wall
               and victim_addrs & set(a.get("upstream_addrs") or [])]
    retried = [a for a in touched if len(a.get("upstream_addrs") or []) > 1 and a.get("status") == 200]
    last = max((a["msec"] for a in touched), default=None)
    return Failover(
        requests=len(all_rows), ok=int(all_rows["ok"].astype(bool).sum()), failed=len(failed),
        failure_classes=failed["error"].fillna("?").map(lambda e: error_summary(e, 60)).value_counts().to_dict(),
        victim=k["server"], sent_after_kill=int(len(after)), proxy_tries_on_dead_server=len(touched),
        retried_elsewhere_ok=len(retried),
        last_try_on_dead_server_s_after_kill=(last - t_kill_wall) if last is not None else math.nan,
        access_log_entries=len(access))


def _kill_wall_s(k: pd.Series, ev: pd.DataFrame) -> float:
    """When the kill happened, in wall seconds: its own instant (an agent's stamp, on the run's clock) where the
    run's clock can be mapped to the wall, else when the event was written, after it."""
    clock = E.events_of(ev, E.ClockAnchor)
    if len(clock) and pd.notna(k.get("kill_t_ns")):
        c = clock.iloc[0]
        return float(c["wall_unix_s"]) + (int(k["kill_t_ns"]) - int(c["t_ns"])) * 1e-9
    return float(k["wall_unix_s"])
