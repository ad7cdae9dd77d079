"""What every phase measures with: a runner through the proxy and one straight to each server, each server's
host sampled where it runs, and the events and trials each phase records (with a wall and a client clock)."""

from __future__ import annotations

import time
from typing import Any

from perfkit.core import events as E
from perfkit.client.backends import Backend, Sampling
from perfkit.core.clock import now_ns
from perfkit.measure.runner import Runner
from perfkit.servers.control import Unknown, WallClock
from perfkit.servers.fleet import Fleet
from perfkit.servers.nginx import Upstream
from perfkit.studies.base import StudyContext

from .fleet_setup import client, host_view, model_name, native_backend, safe_name


class PhaseRun:
    """One phase's runners and tags; its events go to the store with a wall and a client clock."""

    def __init__(self, ctx: StudyContext, fleet: Fleet) -> None:
        self.ctx, self.fleet, self.cfg = ctx, fleet, ctx.cfg
        p = ctx.params
        kw = dict(timeout_s=p.timeouts.request_s, stall_timeout_s=p.timeouts.stall_s, progress=p.progress)
        self.proxy = Runner(client(ctx, fleet.proxy_url), ctx.store, **kw)
        self.direct = [Runner(client(ctx, s.url), ctx.store, **kw) for s in fleet.servers]
        shares = ctx.client_shares()  # load series from the cluster's client nodes, where it names them
        for r in [self.proxy, *self.direct]:
            r.shares = shares
        # Each server's own host: its process tree sampled there (an agent's host, or this one), its log.
        self.views = [host_view(s, p.sampling.interval_s, p.sampling.gpu) for s in fleet.servers]
        self.log_marks: dict[int, Any] = self._log_marks()
        self._last_sample: dict[str, int] = {}
        self._lost: set[str] = set()
        self.model = model_name(ctx, fleet)
        self.sampling = Sampling(self.cfg.num_predict)
        self.workload = ctx.workload(self.cfg.workload) if self.cfg.workload.kind != "synthetic" else None

    def _log_marks(self) -> dict[int, Any]:
        marks: dict[int, Any] = {}
        for i, s in enumerate(self.fleet.servers):
            log = s.control.log_source() if s.control is not None else None
            if log is not None:
                try:
                    # An engine perfkit started: its log from its first line (the start mark anchors its times).
                    marks[i] = 0 if s.engine is not None else log.mark()
                except Unknown:
                    pass
        return marks

    def emit(self, cls: type[E.Event], **data: Any) -> None:
        """Record an event of the study, stamped with the wall and the run's clocks."""
        self.ctx.store.emit(cls(wall_unix_s=time.time(), t_ns=now_ns(), **data))

    def done(self, phase: str) -> bool:
        ev = self.ctx.store.events()
        done = E.events_of(ev, E.PhaseDone)
        return bool(len(done)) and (done["phase"] == phase).any()

    def skip(self, phase: str, why: str) -> None:
        self.emit(E.PhaseSkipped, phase=phase, why=why)

    def one(self, runner: Runner, key: str, *, phase: str, target: str, sampling: Sampling | None = None,
            prompt: str | None = None, **tags: Any) -> dict[str, Any]:
        """One measured request, stored at once."""
        rec = runner.backend.generate(self.model, prompt or runner.prompt(key, self.cfg.prompt_words),
                                      sampling or self.sampling, timeout_s=runner.timeout_s,
                                      stall_timeout_s=runner.stall_timeout_s)
        row = {"trial_id": key, "phase": phase, "target": target, "cache_state": "warm", "warmup": False,
               **tags, **rec.as_dict()}
        self.ctx.store.append_trial(row)
        return row

    def native(self, i: int) -> Backend | None:
        """A backend that can load and unload on server ``i`` (None when its API can't)."""
        return native_backend(self.ctx, self.fleet, i)

    def drain(self) -> None:
        """Every host's samples since the last drain, into the store (on the run's clock, named by host)."""
        for s, v in zip(self.fleet.servers, self.views):
            if v is not None:
                rows = v.drain()
                if rows:
                    self.ctx.store.append_samples(rows)
                    self._last_sample[s.name] = rows[-1]["t_ns"]
                lost = getattr(v, "lost", None)
                if lost and s.name not in self._lost:
                    # Its samples end at the last one drained; what it would have taken since is missing.
                    self._lost.add(s.name)
                    self.emit(E.HostLost, server=s.name, why=lost, last_sample_t_ns=self._last_sample.get(s.name))

    def keep_logs(self) -> None:
        """Each server's log since the study began, kept as ``hosts/<server>/server.log`` with its host's clock."""
        for i, mark in self.log_marks.items():
            s = self.fleet.servers[i]
            clock = s.control.clock if isinstance(s.control, WallClock) else None
            try:
                lines = s.control.log_source().read_since(mark)
            except Unknown as e:
                self.emit(E.HostLogKept, server=s.name, available=False, why=str(e))
                continue
            d = self.ctx.store.dir / "hosts" / safe_name(s.name)
            d.mkdir(parents=True, exist_ok=True)
            (d / "server.log").write_text("".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines))
            self.emit(E.HostLogKept, server=s.name, available=True, lines=len(lines), dir=d.name,
                       wall_offset_s=clock.wall_offset_s if clock else 0.0,
                       clock_uncertainty_s=clock.uncertainty_ns * 1e-9 if clock else 0.0)

    def warm_all(self) -> None:
        """Every server loaded and primed, directly (through the proxy a cold one would hide behind the others)."""
        for i, r in enumerate(self.direct):
            nat = self.native(i)
            if nat is not None:
                nat.load(self.model)
                nat.close()
            rec = r.backend.generate(self.model, "ok", Sampling(num_predict=2), timeout_s=r.timeout_s)
            if not rec.ok:
                raise RuntimeError(f"server {self.fleet.servers[i].url} did not answer: {rec.error}")

    def restore_proxy(self) -> None:
        """The proxy as the parameters configure it, every server upstream: what a phase changed does not leak
        into the next."""
        pc = self.cfg.proxy
        self.fleet.reconfigure(upstreams=[Upstream(s.url, s.weight) for s in self.fleet.servers],
                               buffering=pc.buffering, proxy_read_timeout_s=pc.read_timeout_s,
                               max_fails=pc.max_fails, cache=False, ignore_headers=[])
