"""Fleet: several servers behind a load balancer (nginx): scaling, balance against the weights, the
proxy's own overhead and whether streaming survives it, a cold or dead server, proxy timeouts (504)
and nginx's response cache, each measured, with n and CI.

Embedded: perfkit starts ``servers`` engines (the machine's cores split between them) and nginx with a
config generated in the run directory, and changes it between phases (reload). Servers on other hosts
(``hosts``, with a ``cluster:``): perfkit's agent on each host starts (or finds) its Ollama and sees it
as if it were local — its processes sampled there, its log, its model file for a cold-disk first request,
a kill and a revival for failover — with nginx started here in front of them (or the user's proxy). A
user's fleet: ``proxy_url`` and ``server_urls``; perfkit starts and changes nothing, and the phases that
need to (kill a server, shorten a timeout, turn a cache on) say "unknown, because" in the report.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from perfkit.analysis import figures as F, series as S, stats
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import ci_cell, error_summary, est, failures, measured, method_note
from perfkit.client import backends
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.units import RATIO, TOKENS_PER_S
from perfkit.core.clock import now_ns, utc_now
from perfkit.core.schema import (MAX_GAP_S, MAX_PROMPT_WORDS, MAX_REPS, MAX_REQUESTS, MAX_TOKENS, HostServer,
                                 Strict, concurrency_list, http_url, unique)
from perfkit.measure.runner import Runner
from perfkit.measure.session import ENGINE_LOG_ARGS, write_manifest
from perfkit.servers.control import Unknown
from perfkit.servers.fleet import FLEET_MODEL, Fleet, Server
from perfkit.servers.nginx import install_hint, nginx_binary, nginx_version, parse_access_log
from perfkit.report.answer import answer_block
from perfkit.studies.base import Study, StudyContext, StudyResult
from perfkit.studies.registry import register
from perfkit.workloads import WorkloadParams


class FleetProxyParams(Strict):
    """The proxy perfkit runs (nginx); a common production setup's values are the defaults."""

    read_timeout_s: float = Field(900.0, gt=0, le=MAX_GAP_S, description="proxy_read_timeout")
    buffering: bool = Field(False, description="proxy_buffering (off: streamed tokens pass as they come)")
    keepalive: int = Field(32, ge=0, le=1024, description="idle upstream connections kept per worker")
    max_fails: int = Field(1, ge=0, le=100)
    fail_timeout_s: int = Field(10, ge=1, le=3600)


class FleetParams(Strict):
    """Several servers behind a load balancer. Embedded backend: perfkit starts ``servers`` engines and
    nginx; any other backend: give ``proxy_url`` and ``server_urls`` and perfkit starts nothing."""

    model: str
    servers: int = Field(2, ge=1, le=16, description="embedded: engines to start")
    weights: list[int] | None = Field(None, description="one per server (default: equal)")
    proxy_url: str | None = None
    server_urls: list[str] = Field(default_factory=list)
    hosts: list[HostServer] = Field(default_factory=list, description="servers on other hosts, each driven by perfkit's "
                                    "agent there (needs cluster:); nginx is started here in front of them unless "
                                    "proxy_url names yours")
    api: Literal["openai", "ollama"] = Field("openai", description="the servers' API: OpenAI /v1 or Ollama's own")
    proxy: FleetProxyParams = Field(default_factory=FleetProxyParams)
    concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4])
    requests: int = Field(12, ge=2, le=MAX_REQUESTS)
    num_predict: int = Field(16, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(32, ge=4, le=MAX_PROMPT_WORDS)
    overhead_reps: int = Field(10, ge=2, le=MAX_REPS, description="direct/proxy request pairs per buffering mode")
    cold_reps: int = Field(3, ge=1, le=MAX_REPS, description="cold starts measured for the timeout advice")
    failover_requests: int = Field(16, ge=4, le=MAX_REQUESTS)
    failover_kill_after: int = Field(4, ge=1, le=MAX_REQUESTS, description="kill a server after this many responses")
    short_timeout_s: float | None = Field(None, gt=0, description="the proxy timeout that must produce a 504 "
                                          "(default: half the shortest measured cold start)")
    cache_reps: int = Field(4, ge=2, le=MAX_REPS)
    stale_model: str | None = Field(None, description="embedded: the model the served name is switched to, "
                                    "to show a cached answer outliving a model change")
    workload: WorkloadParams = Field(default_factory=WorkloadParams, description="what the scaling series' requests "
                                     "say (the other phases probe the proxy with perfkit's own prompts)")

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v):
        return concurrency_list(v)

    @field_validator("server_urls")
    @classmethod
    def _urls(cls, v):
        return unique([http_url(u) for u in v], "server url")

    @field_validator("proxy_url")
    @classmethod
    def _purl(cls, v):
        return None if v is None else http_url(v)

    @model_validator(mode="after")
    def _shape(self):
        if self.hosts:
            if self.server_urls:
                raise ValueError("give hosts (servers seen by perfkit's agents) or server_urls (servers seen only "
                                 "through their API), not both")
            if self.api != "ollama":
                raise ValueError("hosts: the agents drive Ollama servers; set api: ollama")
            unique([h.host for h in self.hosts], "host")
            unique([h.url for h in self.hosts], "host url")
            if self.stale_model:
                raise ValueError("stale_model is for the embedded fleet (perfkit switches the model behind the served "
                                 "name); a host's server keeps its own models")
        elif bool(self.proxy_url) != bool(self.server_urls):
            raise ValueError("give both proxy_url and server_urls (a user's own fleet), or neither (embedded)")
        n = self.n_servers()
        if self.weights is not None and (len(self.weights) != n or any(w < 1 for w in self.weights)):
            raise ValueError(f"weights: one integer ≥ 1 per server ({n}), got {self.weights}")
        if self.failover_kill_after >= self.failover_requests:
            raise ValueError("failover_kill_after must be less than failover_requests")
        return self

    def n_servers(self) -> int:
        return len(self.hosts) or len(self.server_urls) or self.servers

    def weight_list(self) -> list[int]:
        return self.weights or [1] * self.n_servers()


PHASES = ("scaling", "overhead", "cold_upstream", "cold_disk", "failover", "timeout", "cache")


# ---- set-up ----------------------------------------------------------------------------------------
def _fleet(ctx: StudyContext) -> Fleet:
    c, p = ctx.cfg, ctx.params
    if c.server_urls:
        return Fleet.external(c.proxy_url, c.server_urls, c.weight_list())
    pc = c.proxy
    proxy = dict(proxy_read_timeout_s=pc.read_timeout_s, buffering=pc.buffering, keepalive=pc.keepalive,
                 max_fails=pc.max_fails, fail_timeout_s=pc.fail_timeout_s)
    if c.hosts:
        cluster = ctx.cluster()
        servers = []
        try:
            for h, w in zip(c.hosts, c.weight_list()):
                ctl = cluster.agent(h.host, h.model_dump(mode="json"), dict(p.backend.settings))
                servers.append(Server(h.url, w, control=ctl, host=h.host))
            return Fleet.on_hosts(servers, ctx.store.dir, proxy_url=c.proxy_url, proxy=proxy)
        except BaseException:
            cluster.close()
            raise
    cores = os.cpu_count() or 1
    threads = max(1, cores // c.servers)  # fair: every server gets the same share, none more than the machine
    settings = {k: v for k, v in p.backend.settings.items() if k != "num_thread"}
    fleet = Fleet.embedded(ctx.models_dir, c.model, ctx.store.dir, servers=c.servers, weights=c.weight_list(),
                           threads=threads, settings=settings, proxy=proxy, log_dir=ctx.run_dir / "logs",
                           extra_args=ENGINE_LOG_ARGS)
    from perfkit.servers.control import EngineControl

    for s in fleet.servers:  # on this host: perfkit sees its own engines whole
        s.control = EngineControl(s.engine, backends.LlamaServerBackend.from_engine(s.engine))
    return fleet


def _model(ctx: StudyContext, fleet: Fleet) -> str:
    return FLEET_MODEL if fleet.servers[0].engine is not None else ctx.cfg.model


def _client(ctx: StudyContext, url: str):
    """The measuring client: the same wire for direct and proxied requests, so the difference is the proxy. A
    fleet's server is seen as a client sees it (its API), never inspected as a local process."""
    return backends.create(ctx.cfg.api, url, headers=ctx.params.backend.headers, inspect_host=False)


def _native(ctx: StudyContext, fleet: Fleet, i: int):
    """A backend that can load and unload on server ``i`` (None when its API can't)."""
    s = fleet.servers[i]
    b = backends.create("llama-server" if s.engine is not None else ctx.cfg.api, s.url,
                        headers=ctx.params.backend.headers, inspect_host=False)
    if b.capabilities.residency:
        return b
    b.close()
    return None


def _view(s: Server, interval_s: float, gpu: bool):
    """A server's host seen where it runs: sampled here when it is this host, by its agent when it is another."""
    if s.control is None:
        return None
    if s.control.is_local:
        from perfkit.sampling.view import LocalView

        return LocalView(s.name, s.control.server_pids, interval_s)
    view = getattr(s.control, "view", None)
    return view(interval_s, gpu) if view is not None else None


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


class _Phase:
    """One phase's runners and tags; its events go to the store with a wall and a client clock."""

    def __init__(self, ctx: StudyContext, fleet: Fleet):
        self.ctx, self.fleet, self.c = ctx, fleet, ctx.cfg
        p = ctx.params
        kw = dict(timeout_s=p.timeouts.request_s, stall_timeout_s=p.timeouts.stall_s, progress=p.progress)
        self.proxy = Runner(_client(ctx, fleet.proxy_url), ctx.store, **kw)
        self.direct = [Runner(_client(ctx, s.url), ctx.store, **kw) for s in fleet.servers]
        shares = ctx.client_shares()  # load series from the cluster's client nodes, where it names them
        for r in [self.proxy, *self.direct]:
            r.shares = shares
        # Each server's own host: its process tree sampled there (an agent's host, or this one), its log.
        self.views = [_view(s, p.sampling.interval_s, p.sampling.gpu) for s in fleet.servers]
        self.log_marks: dict[int, Any] = {}
        self._last_sample: dict[str, int] = {}
        self._lost: set[str] = set()
        for i, s in enumerate(fleet.servers):
            log = s.control.log_source() if s.control is not None else None
            if log is not None:
                try:
                    # An engine perfkit started: its log from its first line (the start mark anchors its times).
                    self.log_marks[i] = 0 if s.engine is not None else log.mark()
                except Unknown:
                    pass
        self.model = _model(ctx, fleet)
        self.sampling = Sampling(self.c.num_predict)
        self.workload = ctx.workload(self.c.workload) if self.c.workload.kind != "synthetic" else None

    def event(self, kind: str, **data: Any) -> None:
        self.ctx.store.event(kind, wall_unix_s=time.time(), t_ns=now_ns(), **data)

    def done(self, phase: str) -> bool:
        ev = self.ctx.store.events()
        return bool(len(ev)) and "phase" in ev and ((ev["kind"] == "phase_done") & (ev["phase"] == phase)).any()

    def skip(self, phase: str, why: str) -> None:
        self.event("phase_skipped", phase=phase, why=why)

    def one(self, runner: Runner, key: str, *, phase: str, target: str, sampling: Sampling | None = None,
            prompt: str | None = None, **tags: Any) -> dict:
        """One measured request, stored at once."""
        rec = runner.backend.generate(self.model, prompt or runner.prompt(key, self.c.prompt_words),
                                      sampling or self.sampling, timeout_s=runner.timeout_s,
                                      stall_timeout_s=runner.stall_timeout_s)
        row = {"trial_id": key, "phase": phase, "target": target, "cache_state": "warm", "warmup": False,
               **tags, **rec.as_dict()}
        self.ctx.store.append_trial(row)
        return row

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
                    self.event("host_lost", server=s.name, why=lost, last_sample_t_ns=self._last_sample.get(s.name))

    def keep_logs(self) -> None:
        """Each server's log since the study began, kept as ``hosts/<server>/server.log`` with its host's clock."""
        for i, mark in self.log_marks.items():
            s = self.fleet.servers[i]
            clock = getattr(s.control, "clock", None)
            try:
                lines = s.control.log_source().read_since(mark)
            except Unknown as e:
                self.event("host_log", server=s.name, available=False, why=str(e))
                continue
            d = self.ctx.store.dir / "hosts" / _safe(s.name)
            d.mkdir(parents=True, exist_ok=True)
            (d / "server.log").write_text("".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines))
            self.event("host_log", server=s.name, available=True, lines=len(lines), dir=d.name,
                       wall_offset_s=clock.wall_offset_s if clock else 0.0,
                       clock_uncertainty_s=clock.uncertainty_ns * 1e-9 if clock else 0.0)

    def warm_all(self) -> None:
        """Every server loaded and primed, directly (through the proxy a cold one would hide behind the others)."""
        for i, r in enumerate(self.direct):
            nat = _native(self.ctx, self.fleet, i)
            if nat is not None:
                nat.load(self.model)
                nat.close()
            rec = r.backend.generate(self.model, "ok", Sampling(num_predict=2), timeout_s=r.timeout_s)
            if not rec.ok:
                raise RuntimeError(f"server {self.fleet.servers[i].url} did not answer: {rec.error}")


# ---- phases ------------------------------------------------------------------------------------------
def _scaling(ph: _Phase) -> None:
    """One server directly at c clients, and the fleet of N through the proxy at N·c (the same load per
    server): efficiency 1 means the fleet does N times the one server's work at every client count."""
    n = len(ph.fleet.servers)
    for conc in ph.c.concurrency:
        tags = {"phase": "scaling", "clients_per_server": conc}
        ph.direct[0].closed_loop(ph.model, conc, ph.c.requests, series=f"scaling/direct/c{conc}",
                                 sampling=ph.sampling, prompt_words=ph.c.prompt_words, tags={**tags, "target": "direct"},
                                 workload=ph.workload)
        ph.proxy.closed_loop(ph.model, n * conc, n * ph.c.requests, series=f"scaling/proxy/c{n * conc}",
                             sampling=ph.sampling, prompt_words=ph.c.prompt_words, tags={**tags, "target": "proxy"},
                             workload=ph.workload)


def _overhead(ph: _Phase) -> None:
    """Direct vs proxied requests in alternating order, to one server, with proxy buffering off and on."""
    # "on" is proxy_buffering as the seed writes it; a server's X-Accel-Buffering: no still turns it off
    # per response, so "on, forced" also ignores that header: what buffering really does to a stream.
    modes = [("off", False, []), ("on", True, []), ("on, X-Accel-Buffering ignored", True, ["X-Accel-Buffering"])] \
        if ph.fleet.managed else [("as configured", None, None)]
    for label, buffering, ignore in modes:
        if buffering is not None:
            ph.fleet.reconfigure(buffering=buffering, ignore_headers=ignore, upstreams=[ph.fleet.nginx.cfg.upstreams[0]])
        for rep in range(ph.c.overhead_reps):
            order = [("direct", ph.direct[0]), ("proxy", ph.proxy)]
            for target, runner in (order if rep % 2 == 0 else order[::-1]):
                ph.one(runner, f"overhead/{label}/{target}/{rep}", phase="overhead", target=target, buffering=label,
                       rep=rep)
    if ph.fleet.managed:
        _restore(ph)


def _restore(ph: _Phase) -> None:
    from perfkit.servers.nginx import Upstream

    pc = ph.c.proxy
    ph.fleet.reconfigure(upstreams=[Upstream(s.url, s.weight) for s in ph.fleet.servers], buffering=pc.buffering,
                         proxy_read_timeout_s=pc.read_timeout_s, max_fails=pc.max_fails, cache=False,
                         ignore_headers=[])


def _cold_upstream(ph: _Phase) -> None:
    last = len(ph.fleet.servers) - 1
    nat = _native(ph.ctx, ph.fleet, last)
    if nat is None or last == 0:
        ph.skip("cold_upstream", "unknown, because " + ("the servers' OpenAI API can't unload a model"
                                                         if nat is None else "there is only one server"))
        return
    nat.unload(ph.model)
    nat.close()
    ph.event("server_unloaded", server=ph.fleet.servers[last].addr)
    n = max(2 * len(ph.fleet.servers), 6)
    ph.proxy.closed_loop(ph.model, len(ph.fleet.servers), n, series="cold_upstream/proxy", sampling=ph.sampling,
                         prompt_words=ph.c.prompt_words, tags={"phase": "cold_upstream", "target": "proxy",
                                                               "cold_server": ph.fleet.servers[last].addr})


def _unload_everywhere(ph: _Phase) -> None:
    """The model unloaded on every server and its memory released: a file another server still maps (servers on
    one host share it) can't leave the page cache."""
    for i, s in enumerate(ph.fleet.servers):
        nat = _native(ph.ctx, ph.fleet, i)
        if nat is not None:
            nat.unload(ph.model)
            nat.close()
            if s.control is not None:
                try:
                    s.control.wait_memory_released(ph.model)
                except Unknown:
                    pass


def _confirm_settings(ph: _Phase, settings: dict) -> None:
    """Each host's server asked what it runs (its log, its process, its runner), as config tuning asks one server:
    a setting a host did not apply is said per host, not assumed."""
    for s in ph.fleet.servers:
        if s.control is None:
            continue
        try:
            checks = s.control.settings_in_effect(settings, ph.model)
        except Unknown as e:
            ph.event("settings_check", server=s.name, unknown_because=str(e))
            continue
        for chk in checks.values():
            ph.event("settings_check", server=s.name, **chk.as_dict())


def _cold_disk(ph: _Phase) -> None:
    """Each server's first request from a cold disk: the model unloaded everywhere, its memory released, the file
    dropped from the server host's page cache (where the host is seen), then one request straight to it."""
    seen = 0
    why_not: list[str] = []
    for i, s in enumerate(ph.fleet.servers):
        nat = _native(ph.ctx, ph.fleet, i) if s.control is not None else None
        if nat is None:
            why_not.append(f"{s.name}: " + ("only its API is seen" if s.control is None else
                                            "its API can't unload the model"))
            continue
        nat.close()
        try:
            s.control.file_cache(ph.model)
        except Unknown as e:
            ph.event("cold_disk_unknown", server=s.name, why=str(e))
            why_not.append(f"{s.name}: {e}")
            continue
        seen += 1
        _unload_everywhere(ph)
        before = s.control.file_cache(ph.model, "evict")
        ph.one(ph.direct[i], f"cold_disk/{s.name}", phase="cold_disk", target="direct", server=s.name,
               cache_state="cold_disk", file_resident_before=before, state_verified=before < 0.05)
    if not seen:
        only_api = all(s.control is None for s in ph.fleet.servers)
        ph.skip("cold_disk", "unknown, because " + (
            "no server's host is seen (a server seen only through its API: give fleet.hosts with a cluster to have "
            "perfkit's agent on each host)" if only_api else "no server's model file could be evicted: "
            + "; ".join(why_not)))


def _failover(ph: _Phase) -> None:
    n = len(ph.fleet.servers)
    # The victim: a server perfkit may kill (one it started), the last such; a user's own server never.
    victim = next((i for i in reversed(range(n)) if ph.fleet.can_kill(i)), None) if n >= 2 else None
    if not ph.fleet.managed or victim is None:
        ph.skip("failover", "unknown, because " + (
            "there is only one server" if n < 2 else
            f"perfkit does not kill servers it did not start, and it started none of these {n} (give a host's "
            "`command` to have its agent start and own its server)" if victim is None else
            "perfkit does not change a proxy it did not start"))
        return
    state = {"done": 0, "killed": False}
    lock = threading.Lock()
    addrs = sorted(_addresses(ph.fleet.servers[victim].url))

    def kill_once(why: str) -> None:
        with lock:
            if state["killed"]:
                return
            state["killed"] = True
        t = ph.fleet.kill(victim)
        ph.event("server_killed", server=ph.fleet.servers[victim].addr, server_addrs=addrs, kill_t_ns=t,
                 scheduled_by=why)

    def on_response(i: int, cap) -> None:  # on the loop: a counter and, once, a kill(2)
        state["done"] += 1
        if state["done"] >= ph.c.failover_kill_after:
            kill_once(f"after {ph.c.failover_kill_after} responses")

    def revive() -> None:
        ph.fleet.revive(victim)
        ph.event("server_revived", server=ph.fleet.servers[victim].addr)

    timer = None
    if not ph.proxy.live_responses:
        # Responses from client nodes reach this process only after the series: the kill can't wait for them. It is
        # set on the run's clock instead, at the time the first responses take (the fleet's warm requests so far),
        # from the series' agreed start: while requests are in flight, as a crash would come.
        e2e = _warm_e2e_s(ph)
        delay = ph.proxy.start_lead_s + ph.c.failover_kill_after * e2e / 2  # two streams
        timer = threading.Timer(delay, kill_once, args=(f"{delay:.2f} s after the series was set off "
                                                         f"({ph.c.failover_kill_after} × {e2e:.2f} s per request ÷ "
                                                         "2 streams)",))
        timer.daemon = True
        timer.start()
    try:
        ph.proxy.closed_loop(ph.model, 2, ph.c.failover_requests, series="failover/proxy", sampling=ph.sampling,
                             prompt_words=ph.c.prompt_words, on_response=on_response,
                             tags={"phase": "failover", "target": "proxy", "victim": ph.fleet.servers[victim].addr})
    except Exception:  # a failure: bring the server back for what follows; Ctrl-C goes straight to stop()
        if state["killed"]:
            revive()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if state["killed"]:
        revive()
        ph.warm_all()


def _warm_e2e_s(ph: _Phase) -> float:
    """The median whole-request time of the fleet's warm requests so far (1 s when there are none)."""
    rows = pd.DataFrame([r for r in ph.ctx.store.trials_log.read() if r.get("ok") and not r.get("cold")])
    e2e = pd.to_numeric(rows.get("e2e_s", pd.Series(dtype=float)), errors="coerce").dropna() if len(rows) else []
    return float(e2e.median()) if len(e2e) else 1.0


def _timeout(ph: _Phase) -> None:
    """Cold starts measured directly (the basis for the timeout advice); then, on the fleet perfkit runs,
    a proxy timeout shorter than a cold start must give 504s."""
    nat = _native(ph.ctx, ph.fleet, 0)
    if nat is None:
        ph.skip("timeout", "unknown, because the servers' OpenAI API can't unload a model, so no cold start "
                           "can be produced and measured")
        return
    for rep in range(ph.c.cold_reps):
        nat.unload(ph.model)
        ph.one(ph.direct[0], f"timeout/cold/{rep}", phase="timeout", target="direct", cold=True, rep=rep)
    if not ph.fleet.managed:
        ph.skip("timeout_504", "unknown, because perfkit does not change the timeout of a proxy it did not start")
        nat.close()
        return
    ok = measured(pd.DataFrame([r for r in ph.ctx.store.trials_log.read() if r.get("phase") == "timeout"]))
    ttfb = float(ok["ttfb_s"].min()) if len(ok) else 1.0
    ttft = float(ok["ttft_s"].min()) if len(ok) else 1.0
    # proxy_read_timeout bounds each silence, the first included. Shorter than the cold wait for headers,
    # the proxy answers 504; if the server sends its headers early (llama-server does), a timeout between
    # headers and first token cuts the stream instead: both are probed, each its own failure class.
    probes = [("before headers", ph.c.short_timeout_s or round(max(0.02, ttfb / 2), 3))]
    if ttft - 2 * ttfb > 0.05 and not ph.c.short_timeout_s:
        # longer than the wait for headers, shorter than the silence after them (the timer restarts there)
        probes.append(("after headers", round(ttft / 2, 3)))
    from perfkit.servers.nginx import Upstream

    for label, short in probes:
        # One failure must not bench the server for the rest of the run (max_fails 0), and with one
        # upstream nothing is retried elsewhere: what comes back is the proxy's own answer.
        ph.fleet.reconfigure(proxy_read_timeout_s=short, max_fails=0, upstreams=[Upstream(ph.fleet.servers[0].url, 1)])
        ph.event("short_timeout", proxy_read_timeout_s=short, probe=label, cold_ttfb_s=ttfb, cold_ttft_s=ttft)
        nat.unload(ph.model)
        ph.one(ph.proxy, f"timeout/proxy/{label}", phase="timeout", target="proxy", cold=True, probe=label,
               proxy_read_timeout_s=short)
    _restore(ph)
    nat.close()
    ph.warm_all()


def _cache(ph: _Phase) -> None:
    if not ph.fleet.managed:
        _cache_probe(ph)
        return
    # nginx stores only buffered responses: the cache brings buffering with it (see the overhead phase).
    ph.fleet.reconfigure(cache=True, buffering=True)
    ph.event("cache_on", key=ph.fleet.nginx.cfg.cache_key, valid_s=ph.fleet.nginx.cfg.cache_valid_s, ignore=[])
    base = ph.proxy.prompt("cache/prompt", ph.c.prompt_words)
    greedy = Sampling(ph.c.num_predict, temperature=0.0, top_k=1, seed=1)
    # First as the seed writes it; a server's X-Accel-Buffering: no makes every response uncacheable.
    seed_rows = [ph.one(ph.proxy, f"cache/seed/{rep}", phase="cache", target="proxy", variant="as configured", rep=rep,
                        sampling=greedy, prompt=ph.proxy.prompt("cache/seed", ph.c.prompt_words)) for rep in range(2)]
    # nginx consumes X-Accel-* headers: ask the server itself what it sends.
    srv = ph.one(ph.direct[0], "cache/server-headers", phase="cache", target="direct", variant="server headers",
                 sampling=greedy, prompt=base)
    if seed_rows[-1].get("proxy_cache") != "HIT" and srv.get("accel_buffering") == "no":
        ph.fleet.reconfigure(ignore_headers=["X-Accel-Buffering"])
        ph.event("cache_on", key=ph.fleet.nginx.cfg.cache_key, ignore=["X-Accel-Buffering"])
    sampled = Sampling(ph.c.num_predict, temperature=0.8)
    for rep in range(ph.c.cache_reps):
        ph.one(ph.proxy, f"cache/greedy/{rep}", phase="cache", target="proxy", variant="greedy", rep=rep,
               sampling=greedy, prompt=base)
    # The same prompt, one sampling option changed: another body, so another key.
    ph.one(ph.proxy, "cache/greedy-top_k2/0", phase="cache", target="proxy", variant="options differ", rep=0,
           sampling=Sampling(ph.c.num_predict, temperature=0.0, top_k=2, seed=1), prompt=base)
    for rep in range(ph.c.cache_reps):
        ph.one(ph.proxy, f"cache/sampled/{rep}", phase="cache", target="proxy", variant="sampled", rep=rep,
               sampling=sampled, prompt=base)
        ph.one(ph.direct[0], f"cache/sampled-direct/{rep}", phase="cache", target="direct", variant="sampled",
               rep=rep, sampling=sampled, prompt=base)
    if ph.c.stale_model:
        ph.fleet.swap_model(ph.c.stale_model, ph.ctx.models_dir)
        for i in range(len(ph.fleet.servers)):
            nat = _native(ph.ctx, ph.fleet, i)
            nat.unload(ph.model)
            nat.close()
        ph.event("model_changed", to=ph.c.stale_model)
        ph.one(ph.proxy, "cache/stale/proxy", phase="cache", target="proxy", variant="after model change",
               sampling=greedy, prompt=base)
        ph.one(ph.direct[0], "cache/stale/direct", phase="cache", target="direct", variant="after model change",
               sampling=greedy, prompt=base)
        ph.fleet.swap_model(ph.c.model, ph.ctx.models_dir)
        for i in range(len(ph.fleet.servers)):
            nat = _native(ph.ctx, ph.fleet, i)
            nat.unload(ph.model)
            nat.close()
    _restore(ph)


def _cache_probe(ph: _Phase) -> None:
    """A user's proxy: identical greedy requests; its X-Cache-Status says what it did, where it says anything."""
    base = ph.proxy.prompt("cache/prompt", ph.c.prompt_words)
    greedy = Sampling(ph.c.num_predict, temperature=0.0, top_k=1, seed=1)
    for rep in range(ph.c.cache_reps):
        ph.one(ph.proxy, f"cache/greedy/{rep}", phase="cache", target="proxy", variant="greedy", rep=rep,
               sampling=greedy, prompt=base)


def measure(ctx: StudyContext) -> None:
    c = ctx.cfg
    if not c.server_urls and nginx_version() is None:
        raise RuntimeError(f"the fleet study needs nginx: {install_hint()}")
    fleet = _fleet(ctx)
    ph = None
    try:
        ph = _Phase(ctx, fleet)
        # The fleet's own changes (reloads, kills, model swaps) go to the store as they happen.
        fleet.on_event = lambda e: ctx.store.event(f"fleet_{e['kind']}", **{k: v for k, v in e.items() if k != "kind"})
        backend = ph.proxy.backend.describe()
        if fleet.servers[0].engine is not None:
            from perfkit.servers.engine import engine_version

            backend = {"backend": "llama-server", "version": engine_version(),
                       "served_as": f"×{len(fleet.servers)} behind nginx {fleet.nginx.version}",
                       "url": fleet.proxy_url, "client": backend.get("backend")}
        if fleet.managed and fleet.servers[0].engine is None:
            backend = {**backend, "served_as": f"×{len(fleet.servers)} on their hosts behind nginx {fleet.nginx.version}"}
        unseen = [s.name for s, v in zip(fleet.servers, ph.views) if v is None]
        write_manifest(ctx.store, extra={
            "study": "fleet", "fleet": fleet.describe(), "backend": backend,
            "params": ctx.params.model_dump(mode="json"), "params_file": str(ctx.params_path),
            "sampling_unavailable": {"resources": "servers seen only through their API: "
                                                  + ", ".join(unseen)} if unseen else {},
            "hosts_sampled": {s.name: v.unavailable for s, v in zip(fleet.servers, ph.views) if v is not None},
            **({"cluster": ctx.cluster().describe()} if c.hosts or ctx.client_shares() else {}),
            "engine_command": fleet.servers[0].engine.command if fleet.servers[0].engine else None})
        ph.event("clock")
        ph.warm_all()
        if c.hosts and ctx.params.backend.settings:
            _confirm_settings(ph, dict(ctx.params.backend.settings))
        for name, fn in (("scaling", _scaling), ("overhead", _overhead), ("cold_upstream", _cold_upstream),
                         ("cold_disk", _cold_disk), ("failover", _failover), ("timeout", _timeout), ("cache", _cache)):
            if ph.done(name):
                continue
            ph.event("phase_start", phase=name)
            fn(ph)
            ph.drain()
            ph.event("phase_done", phase=name)
    finally:
        if ph is not None:
            ph.drain()
            ph.keep_logs()
            for v in ph.views:
                if v is not None:
                    v.stop()
        if fleet.nginx is not None:
            import shutil

            for name in ("access.log", "error.log", "nginx.conf"):
                src = fleet.nginx.prefix / name
                if src.exists():
                    shutil.copy(src, ctx.store.dir / f"nginx-{name}")
        fleet.stop()
        if c.hosts:
            # What each agent did at the end: a server stopped, or a user's given its own settings back (or not).
            for host, out in ctx.cluster().close().items():
                ctx.store.event("agent_closed", host=host, **out)
        ctx.store.write_manifest(ended_utc=utc_now())


# ---- analysis ------------------------------------------------------------------------------------
def _phase(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df[df["phase"] == name] if len(df) and "phase" in df else df.iloc[0:0]


def scaling_table(df: pd.DataFrame, ev: pd.DataFrame, n_servers: int) -> pd.DataFrame:
    """Per client count per server c: one server's throughput directly at c clients and the fleet's through
    the proxy at N·c, each with its CI, latency percentiles (steady window), and scaling efficiency = fleet
    throughput ÷ (N × one server's), 1 = perfect at every c."""
    sc = S.series_checks(ev)
    rows = []
    g_phase = _phase(df, "scaling")
    if g_phase.empty:
        return pd.DataFrame()
    per = "clients_per_server" if "clients_per_server" in g_phase else "concurrency"
    for (c, target), g_all in S.last_attempt(g_phase).groupby([per, "target"]):
        chk = sc.get(g_all["series"].iloc[0], {})
        g = measured(g_all)
        steady = S.in_window(g, chk)
        steady_all = S.in_window(g_all, chk)  # tails count failures as beyond the limit, every percentile alike
        tp = S.throughput(g, chk)
        rows.append({"clients_per_server": int(c), "target": target, "clients": int(g_all["concurrency"].iloc[0]),
                     "n": len(steady), "n_series": len(g_all), "failed": int(len(g_all) - len(g)), "tok_s": tp.value, "tok_s_lo": tp.lo,
                     "tok_s_hi": tp.hi, "tok_s_text": TOKENS_PER_S.estimate(tp), "estimate": tp,
                     "ttft_p50": ci_cell(est(steady["ttft_s"])), "ttft_p90": ci_cell(est(S.censored(steady_all, "ttft_s"), "p90")),
                     "ttft_p99": ci_cell(est(S.censored(steady_all, "ttft_s"), "p99")),
                     "e2e_p50": ci_cell(est(steady["e2e_s"])), "e2e_p99": ci_cell(est(S.censored(steady_all, "e2e_s"), "p99")),
                     "achieved_concurrency": chk.get("achieved_concurrency", math.nan),
                     "client_check": S.client_cell(chk, {"TTFT": est(steady["ttft_s"]).value}),
                     "client_bound": bool(chk.get("client_client_bound", False))})
    t = pd.DataFrame(rows)
    eff = []
    for _, r in t.iterrows():
        d = t[(t["clients_per_server"] == r["clients_per_server"]) & (t["target"] == "direct")]
        if r["target"] != "proxy" or d.empty:
            eff.append(stats.Estimate("efficiency", math.nan, math.nan, math.nan, 0))
            continue
        eff.append(efficiency(r["estimate"], d.iloc[0]["estimate"], n_servers))
    t["efficiency"] = [e.value for e in eff]
    t["efficiency_lo"] = [e.lo for e in eff]
    t["efficiency_hi"] = [e.hi for e in eff]
    t["efficiency_est"] = eff
    return t.sort_values(["clients_per_server", "target"]).reset_index(drop=True)


def efficiency(fleet: stats.Estimate, one: stats.Estimate, n_servers: int) -> stats.Estimate:
    """Fleet throughput ÷ (N × one server's), with a CI from the two throughput CIs on the log scale."""
    from perfkit.analysis.verdicts import compare_estimates

    scaled = stats.Estimate(one.stat, one.value * n_servers, one.lo * n_servers, one.hi * n_servers, one.n,
                            one.confidence, one.method)
    r = compare_estimates(scaled, fleet, "higher").ratio
    return stats.Estimate("efficiency", r.value, r.lo, r.hi, min(fleet.n, one.n), r.confidence,
                          "fleet ÷ (N × one server), CI from both batch-means CIs (log scale)")


def _addresses(url: str) -> set[str]:
    """Every ``address:port`` a server URL's host resolves to (nginx's $upstream_addr names the address)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    out = {f"{u.hostname}:{port}"}
    try:
        for info in socket.getaddrinfo(u.hostname, port, type=socket.SOCK_STREAM):
            addr = info[4][0]
            out.add(f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
    except OSError:
        pass
    return out


def _served_by(value: Any) -> str | None:
    """The upstream that answered: the last of a retried request's "a, b" (and of "a : b" redirects)."""
    if not isinstance(value, str) or not value.strip() or value.strip() == "-":
        return None
    return value.replace(" : ", ", ").split(",")[-1].strip()


def _server_of(servers: list[dict]) -> dict[str, str]:
    """Every address nginx may name (each configured host resolved) → the server as the user configured it."""
    return {addr: s["url"].split("://", 1)[-1].rstrip("/") for s in servers for addr in _addresses(s["url"])}


def balance_table(df: pd.DataFrame, servers: list[dict]) -> tuple[pd.DataFrame, str]:
    """Which server answered each proxied request (the proxy's X-Upstream-Addr, matched against every address
    each server's host resolves to) against the weights; a server that matched nothing says what nginx named."""
    rows = measured(pd.concat([_phase(df, "scaling"), _phase(df, "cold_upstream")]))
    rows = rows[rows["target"] == "proxy"] if len(rows) else rows
    if rows.empty or "served_by" not in rows or rows["served_by"].isna().all():
        return pd.DataFrame(), ("unknown, because the proxy adds no X-Upstream-Addr header; add "
                                "`add_header X-Upstream-Addr $upstream_addr always;` to its location")
    scaling = rows[rows["phase"] == "scaling"]
    last = scaling["served_by"].map(_served_by)
    server = last.map(_server_of(servers))
    n = len(scaling)
    total_w = sum(s["weight"] for s in servers)
    out = []
    for s in servers:
        name = s["url"].split("://", 1)[-1].rstrip("/")
        k = int((server == name).sum())
        share = stats.proportion(k, n)
        want = s["weight"] / total_w
        out.append({"server": name, "weight": s["weight"], "configured share": want,
                    "requests": k, "share": share.value, "share_lo": share.lo, "share_hi": share.hi,
                    "matches weights": bool(share.lo <= want <= share.hi)})
    other = sorted(set(last[server.isna()].dropna()))
    t = pd.DataFrame(out)
    src = "the X-Upstream-Addr header the proxy adds to each response"
    if other:
        src += f" (answers from {', '.join(other[:4])} matched no configured server)"
    return t, src


def overhead_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per buffering mode: TTFT and e2e direct vs through the proxy, the added time (Hodges–Lehmann shift,
    Moses CI), and whether the first token was held back (proxy TTFT close to its e2e)."""
    ok = measured(_phase(df, "overhead"))
    rows = []
    for mode, g in ok.groupby("buffering", sort=False):
        d, p = g[g["target"] == "direct"], g[g["target"] == "proxy"]
        add_ttft, add_e2e = stats.shift(p["ttft_s"], d["ttft_s"]), stats.shift(p["e2e_s"], d["e2e_s"])
        gap = float(d["e2e_s"].median() - d["ttft_s"].median())
        held = bool(p["ttft_s"].median() > d["ttft_s"].median() + 0.5 * gap) if gap > 0 else None
        rows.append({"buffering": mode, "n": min(len(d), len(p)), "added_ttft": add_ttft,
                     "ttft_direct": ci_cell(est(d["ttft_s"])),
                     "ttft_proxy": ci_cell(est(p["ttft_s"])), "added_ttft_s": add_ttft.value,
                     "added_ttft_lo": add_ttft.lo, "added_ttft_hi": add_ttft.hi, "added_e2e_s": add_e2e.value,
                     "added_e2e_lo": add_e2e.lo, "added_e2e_hi": add_e2e.hi,
                     "first_token_held_back": held,
                     "proxy_ttft_share_of_e2e": float((p["ttft_s"] / p["e2e_s"]).median()) if len(p) else math.nan})
    return pd.DataFrame(rows)


def cold_upstream_table(df: pd.DataFrame, servers: list[dict]) -> pd.DataFrame:
    """Per server that answered through the proxy after the last one was unloaded: its first and typical TTFT
    (the cold one's first request pays the load)."""
    g = measured(_phase(df, "cold_upstream"))
    if g.empty or "served_by" not in g:
        return pd.DataFrame()
    cold = g["cold_server"].iloc[0]
    names = _server_of(servers)
    g = g.assign(server=g["served_by"].map(_served_by).map(lambda a: names.get(a, a)))
    rows = []
    for name, h in g.groupby("server"):
        h = h.sort_values("t_send_ns")
        rows.append({"server": name, "cold": name == cold, "requests": len(h),
                     "first_ttft_s": float(h["ttft_s"].iloc[0]), "ttft_p50": ci_cell(est(h["ttft_s"])),
                     "ttft_max_s": float(h["ttft_s"].max())})
    return pd.DataFrame(rows)


def failover_summary(df: pd.DataFrame, ev: pd.DataFrame, access: list[dict]) -> dict[str, Any]:
    """What a killed server cost: failed requests by class, retries the proxy made on another server,
    and how long the proxy kept trying the dead one (from nginx's access log)."""
    all_rows = _phase(df, "failover")
    if all_rows.empty:
        return {}
    kill = ev[ev["kind"] == "server_killed"]
    if kill.empty:
        return {"requests": len(all_rows), "note": "the kill was not reached"}
    k = kill.iloc[-1]
    victim, t_kill_wall = k["server"], float(k["wall_unix_s"])
    # nginx names the address it connected to; the URL may name the host: every address it resolved to counts.
    victim_addrs = set(k.get("server_addrs") if isinstance(k.get("server_addrs"), list) else []) | {victim}
    clock = ev[ev["kind"] == "clock"]
    if len(clock) and pd.notna(k.get("kill_t_ns")):
        # The kill's own instant (an agent's stamp, on the run's clock), not when the event was written after it.
        c = clock.iloc[0]
        t_kill_wall = float(c["wall_unix_s"]) + (int(k["kill_t_ns"]) - int(c["t_ns"])) * 1e-9
    rev = ev[(ev["kind"] == "server_revived") & (ev["wall_unix_s"] > t_kill_wall)]
    t_end_wall = float(rev["wall_unix_s"].iloc[0]) if len(rev) else math.inf  # the same address serves again
    after = all_rows[all_rows["t_send_ns"] >= int(k["kill_t_ns"]) - int(30e9)]
    failed = all_rows[~all_rows["ok"].astype(bool)]
    # A try on the dead server ends after the kill (nginx logs $msec, in ms, at the request's end); one that ended
    # before it was served by the live server, not tried on a dead one.
    touched = [a for a in access if t_kill_wall - 0.001 <= a.get("msec", 0) <= t_end_wall
               and victim_addrs & set(a.get("upstream_addrs") or [])]
    retried = [a for a in touched if len(a.get("upstream_addrs") or []) > 1 and a.get("status") == 200]
    last = max((a["msec"] for a in touched), default=None)
    return {"requests": len(all_rows), "ok": int(all_rows["ok"].astype(bool).sum()), "failed": len(failed),
            "failure_classes": failed["error"].fillna("?").map(lambda e: error_summary(e, 60)).value_counts().to_dict(),
            "victim": victim, "sent_after_kill": int(len(after)), "proxy_tries_on_dead_server": len(touched),
            "retried_elsewhere_ok": len(retried),
            "last_try_on_dead_server_s_after_kill": (last - t_kill_wall) if last is not None else math.nan,
            "access_log_entries": len(access)}


def timeout_summary(df: pd.DataFrame, ev: pd.DataFrame, read_timeout_s: float) -> dict[str, Any]:
    g = _phase(df, "timeout")
    cold = measured(g[g["target"] == "direct"]) if len(g) else g
    out: dict[str, Any] = {"configured_read_timeout_s": read_timeout_s}
    if len(cold):
        ttft = est(cold["ttft_s"], "p99")
        worst = float(cold["ttft_s"].max())
        if ttft.has_ci:
            basis, value = f"the upper end of the cold-start TTFT p99's CI (n={len(cold)})", ttft.hi
        else:
            basis, value = (f"the longest of {len(cold)} measured cold starts (n={len(cold)} is too small for a "
                            f"p99 CI; {ttft.need_n or '?'} would give one)"), worst
        out.update(cold_n=len(cold), cold_ttft_p50=ci_cell(est(cold["ttft_s"])), cold_ttft_max_s=worst,
                   recommended_read_timeout_s=float(math.ceil(2 * value)), basis=basis)
    proxied = g[g["target"] == "proxy"] if len(g) else g
    if len(proxied):
        out["probes"] = [{"probe": r.get("probe"), "proxy_read_timeout_s": r.get("proxy_read_timeout_s"),
                          "http_status": r.get("http_status"), "outcome": _timeout_class(r) + _missed(r)}
                         for _, r in proxied.iterrows()]
    return out


def _missed(r) -> str:
    """A probe that did not test what it names says so: one meant to time out after the server's headers that
    timed out before them (the cold start sent its headers later than the measured one did)."""
    if r.get("probe") == "after headers" and str(r.get("error") or "").startswith("proxy timeout: HTTP 504"):
        return (" — so this probe did not test a timeout after the headers: this cold start sent its headers later "
                "than the one its timeout was set from")
    return ""


def _timeout_class(r) -> str:
    err = r.get("error") or ""
    if r.get("ok"):
        return "answered (no timeout)"
    if err.startswith("proxy timeout: HTTP 504"):
        return "proxy 504 (timed out before the server's headers)"
    if err.startswith("server connection lost") and pd.notna(r.get("ttfb_s")):
        return "cut mid-stream by the proxy (the server had sent its headers, then fell silent past the timeout)"
    return f"other failure: {error_summary(err, 60)}"


def cache_summary(df: pd.DataFrame) -> dict[str, Any]:
    g = _phase(df, "cache")
    if g.empty:
        return {}
    ok = g[g["ok"].astype(bool)]
    v = ok["variant"] if "variant" in ok else pd.Series("", index=ok.index)
    out: dict[str, Any] = {}
    seed = ok[(v == "as configured") & (ok["target"] == "proxy")]
    srv = ok[v == "server headers"]
    if len(seed):
        out["seed_config_statuses"] = seed["proxy_cache"].fillna("none").tolist()
        out["server_accel_buffering"] = srv["accel_buffering"].iloc[0] if len(srv) else None
    proxied = ok[(ok["target"] == "proxy") & (v != "as configured")]
    status = proxied["proxy_cache"].fillna("none") if "proxy_cache" in proxied else pd.Series("none", index=proxied.index)
    out.update({"requests": len(proxied), "status_counts": status.value_counts().to_dict(),
                "header": bool((status != "none").any())})
    hits, misses = proxied[status == "HIT"], proxied[status == "MISS"]
    out["hit_ratio_est"] = stats.proportion(len(hits), len(proxied))
    out["hit_ratio"] = out["hit_ratio_est"].__dict__
    if len(hits):
        out["hit_ttft"], out["hit_e2e"] = ci_cell(est(hits["ttft_s"])), ci_cell(est(hits["e2e_s"]))
        itl = [x for t in hits["itl_s"] if isinstance(t, (list, np.ndarray)) for x in t]
        out["hit_itl_p50_s"] = float(np.median(itl)) if itl else math.nan
    if len(misses):
        out["miss_ttft"], out["miss_e2e"] = ci_cell(est(misses["ttft_s"])), ci_cell(est(misses["e2e_s"]))
        if len(hits):
            out["miss_over_hit_e2e"] = RATIO.estimate(stats.ratio(misses["e2e_s"], hits["e2e_s"]))
    opt = proxied[v.reindex(proxied.index) == "options differ"]
    out["options_differ_status"] = opt["proxy_cache"].iloc[0] if len(opt) and "proxy_cache" in opt else None
    sampled_p = ok[(v == "sampled") & (ok["target"] == "proxy")]
    sampled_d = ok[(v == "sampled") & (ok["target"] == "direct")]
    if len(sampled_p) and len(sampled_d):
        out["sampled_distinct_via_cache"] = int(sampled_p["text"].nunique())
        out["sampled_distinct_direct"] = int(sampled_d["text"].nunique())
        out["sampled_n"] = int(min(len(sampled_p), len(sampled_d)))
    stale_p = ok[(v == "after model change") & (ok["target"] == "proxy")]
    stale_d = ok[(v == "after model change") & (ok["target"] == "direct")]
    greedy = ok[(v == "greedy") & (ok["target"] == "proxy")]
    if len(stale_p) and len(stale_d) and len(greedy):
        out["stale"] = {"proxy_status": stale_p["proxy_cache"].iloc[0],
                        "proxy_answer_is_old_model": bool(stale_p["text"].iloc[0] == greedy["text"].iloc[0]),
                        "server_answer_changed": bool(stale_d["text"].iloc[0] != greedy["text"].iloc[0])}
    return out


def _phase_spans(ev: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(phase, start ns, end ns) on the run's clock, from the phase events."""
    if ev.empty or "phase" not in ev:
        return []
    out = []
    starts = ev[ev["kind"] == "phase_start"]
    for _, r in starts.iterrows():
        end = ev[(ev["kind"] == "phase_done") & (ev["phase"] == r["phase"]) & (ev["t_ns"] >= r["t_ns"])]
        out.append((r["phase"], int(r["t_ns"]), int(end["t_ns"].iloc[0]) if len(end) else int(ev["t_ns"].max())))
    return out


def _phase_at(spans: list[tuple[str, int, int]], t_ns: float) -> str:
    if spans and t_ns < spans[0][1]:
        return "set-up"
    return next((p for p, a, b in spans if a <= t_ns <= b), "between phases")


def hosts_table(samples: pd.DataFrame, ev: pd.DataFrame) -> pd.DataFrame:
    """Per server host and phase: the server's process tree as its own host sampled it (CPU in % of one core,
    resident memory), and the host's GPUs where NVML saw any."""
    if samples.empty or "host" not in samples:
        return pd.DataFrame()
    spans = _phase_spans(ev)
    rows = []
    sys_ = samples[(samples["source"] == "system") & samples["host"].notna()]
    gpu = samples[(samples["source"] == "gpu") & samples["host"].notna()] if "source" in samples else samples.iloc[0:0]
    for host, h in sys_.groupby("host", sort=False):
        for phase, a, b in spans:
            w = h[(h["t_ns"] >= a) & (h["t_ns"] <= b)]
            if w.empty:
                continue
            g = gpu[(gpu["host"] == host) & (gpu["t_ns"] >= a) & (gpu["t_ns"] <= b)]
            rows.append({"server": host, "phase": phase, "samples": len(w),
                         "server_cpu_pct_mean": float(w["server_cpu_pct"].clip(lower=0).mean()),
                         "server_cpu_pct_max": float(w["server_cpu_pct"].max()),
                         "server_rss_bytes_max": float(w["server_rss_bytes"].max()),
                         "server_processes_max": int(w["server_processes"].max()),
                         "gpu_util_pct_mean": float(g["gpu_util_pct"].mean()) if len(g) and "gpu_util_pct" in g
                         else math.nan})
    return pd.DataFrame(rows)


def cold_disk_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per server: its first request after the model was unloaded and its file evicted from its host's page cache."""
    g = _phase(df, "cold_disk")
    if g.empty:
        return pd.DataFrame()
    return pd.DataFrame([{"server": r["server"], "ok": bool(r["ok"]),
                          "file_in_page_cache": r.get("file_resident_before"),
                          "cold": bool(r.get("state_verified", r.get("file_resident_before", 1) < 0.05)),
                          "ttft_s": r.get("ttft_s"), "load_s": r.get("load_s"), "e2e_s": r.get("e2e_s"),
                          "error": r.get("error")} for _, r in g.iterrows()])


def host_timelines(study_dir, ev: pd.DataFrame, df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each server's own log (kept per host), put on the run's clock through its host's measured offset: the
    notable events with the phase they fell in, seconds from the study's start and the clock's uncertainty."""
    from pathlib import Path

    from perfkit.analysis.timeline import load_account, timeline_frame

    out: dict[str, pd.DataFrame] = {}
    if ev.empty or "kind" not in ev:
        return out
    logs = ev[(ev["kind"] == "host_log")]
    if logs.empty or "available" not in logs:
        return out
    spans = _phase_spans(ev)
    clock = ev[ev["kind"] == "clock"]
    t0 = int(clock["t_ns"].iloc[0]) if len(clock) else None
    for _, r in logs[logs["available"].astype(bool)].iterrows():
        acc = load_account(Path(study_dir) / "hosts" / r["dir"], ev, df, wall_offset_s=float(r["wall_offset_s"]))
        t = timeline_frame(acc, t0)
        if t.empty:
            continue
        t = t[t["kind"] != "request"].copy()  # per-request lines are the requests' own rows already
        t["phase"] = [_phase_at(spans, x) if pd.notna(x) else "?" for x in t["t_ns"]]
        t["clock_uncertainty_s"] = float(r.get("clock_uncertainty_s") or 0.0)
        out[r["server"]] = t
    return out


@dataclass
class FleetResult(StudyResult):
    fleet: dict = field(default_factory=dict)
    scaling: pd.DataFrame = field(default_factory=pd.DataFrame)
    balance: pd.DataFrame = field(default_factory=pd.DataFrame)
    balance_source: str = ""
    overhead: pd.DataFrame = field(default_factory=pd.DataFrame)
    cold_upstream: pd.DataFrame = field(default_factory=pd.DataFrame)
    failover: dict = field(default_factory=dict)
    timeout: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    clients: pd.DataFrame = field(default_factory=pd.DataFrame)
    hosts: pd.DataFrame = field(default_factory=pd.DataFrame)
    cold_disk: pd.DataFrame = field(default_factory=pd.DataFrame)
    timelines: dict = field(default_factory=dict)
    hosts_lost: list = field(default_factory=list)
    cluster: dict = field(default_factory=dict)
    settings: pd.DataFrame = field(default_factory=pd.DataFrame)  # per host: each setting confirmed or not
    agents_closed: list = field(default_factory=list)  # per host: what its agent did at the end


def analyze(ctx: StudyContext) -> FleetResult:
    c = ctx.cfg
    df = ctx.store.trials()
    ev = ctx.store.events()
    manifest = ctx.store.manifest()
    fleet = manifest.get("fleet", {})
    servers = fleet.get("servers", [])
    access_path = ctx.store.dir / "nginx-access.log"
    access = parse_access_log(access_path) if access_path.exists() else []
    skipped = ev[ev["kind"] == "phase_skipped"][["phase", "why"]].to_dict("records") \
        if len(ev) and "why" in ev and "kind" in ev else []
    bal, bal_source = balance_table(df, servers) if servers else (pd.DataFrame(), "no servers recorded")
    n = max(1, len(servers))
    scaling = scaling_table(df, ev, n)
    overhead = overhead_table(df)
    cache = cache_summary(df)
    wl = {"prompt_words": c.prompt_words, "num_predict": c.num_predict, "servers": n}
    figs = FigureSet()
    for _, r in scaling.iterrows():
        where = {"target": r["target"], "clients": int(r["clients"])}
        figs.add(F.from_estimate("fleet", "throughput", r["estimate"], where=where, workload=wl))
        if r["target"] == "proxy":
            figs.add(F.from_estimate("fleet", "efficiency", r["efficiency_est"],
                                     where={"clients_per_server": int(r["clients_per_server"])}, workload=wl))
    if len(scaling) and (scaling["target"] == "proxy").any():
        top = scaling[scaling["target"] == "proxy"]["clients_per_server"].max()
        f = figs.get(f"fleet/efficiency/{int(top)}")
        if f is not None:
            f.headline = "scaling efficiency"
    for _, r in overhead.iterrows():
        figs.add(F.from_estimate("fleet", "proxy_overhead", r["added_ttft"], where={"buffering": r["buffering"]},
                                 workload=wl))
    if cache.get("hit_ratio_est") is not None:
        figs.add(F.from_estimate("fleet", "hit_ratio", cache["hit_ratio_est"], workload=wl))
    return FleetResult("fleet", figs, df, manifest, failures(df), fleet=fleet, scaling=scaling, balance=bal,
                       balance_source=bal_source, overhead=overhead, cold_upstream=cold_upstream_table(df, servers),
                       failover=failover_summary(df, ev, access),
                       timeout=timeout_summary(df, ev, fleet.get("proxy_read_timeout_s") or c.proxy.read_timeout_s),
                       cache=cache, skipped=skipped, clients=S.client_table(ev, df),
                       hosts=hosts_table(ctx.store.samples(), ev), cold_disk=cold_disk_table(df),
                       timelines=host_timelines(ctx.store.dir, ev, df), cluster=manifest.get("cluster") or {},
                       hosts_lost=ev[ev["kind"] == "host_lost"][["server", "why"]].to_dict("records")
                       if len(ev) and "kind" in ev and (ev["kind"] == "host_lost").any() else [],
                       settings=_events(ev, "settings_check"),
                       agents_closed=_events(ev, "agent_closed").to_dict("records"))


def _events(ev: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The events of one kind, only the columns they have."""
    if not len(ev) or "kind" not in ev:
        return pd.DataFrame()
    return ev[ev["kind"] == kind].dropna(axis=1, how="all")


@register
class FleetStudy(Study):
    name = "fleet"
    title = "A fleet behind a load balancer"
    question = ("Several servers behind nginx: how well do they scale, does the proxy balance, add latency or break "
                "streaming, and what happens when a server is cold or dies?")
    Params = FleetParams
    order = 50

    def models_used(self, cfg: FleetParams) -> list[tuple[str, str]]:
        if cfg.server_urls or cfg.hosts:  # a user's servers serve their own names
            return []
        return [("model", cfg.model)] + ([("stale_model", cfg.stale_model)] if cfg.stale_model else [])

    def check_params(self, params: Any) -> None:
        f = params.studies.fleet
        if f.hosts:
            if params.cluster is None:
                raise ValueError("studies.fleet.hosts: servers on other hosts are driven by perfkit's agent on each "
                                 "host: add a cluster: section (address: auto, HOST:PORT or ray://HOST:PORT)")
            return
        if not backends.capabilities(params.backend.kind).started_by_perfkit and not f.server_urls:
            raise ValueError("studies.fleet: with a server of your own (backend kind "
                             f"{params.backend.kind!r}) give fleet.proxy_url and fleet.server_urls; perfkit starts "
                             "engines and nginx only for the embedded backend")

    def preflight(self, params: Any) -> list[str]:
        """A user's fleet: the proxy and every server must answer their API before anything is measured."""
        from perfkit.client.probe import probe
        from perfkit.core.errors import PerfkitError

        f = params.studies.fleet
        out = []
        for key, url in [("studies.fleet.proxy_url", f.proxy_url)] + [
                (f"studies.fleet.server_urls[{i}]", u) for i, u in enumerate(f.server_urls)]:
            if url:
                try:
                    probe(f.api, url, dict(params.backend.headers), f"{key} {url}", timeout_s=5.0)
                except PerfkitError as e:
                    out.append(str(e))
        return out

    def unavailable(self, params: Any) -> str | None:
        f = params.studies.fleet
        if not f.server_urls and not f.proxy_url and nginx_binary() is None:
            return f"nginx is not installed; {install_hint()}"
        return None

    def measure(self, ctx: StudyContext) -> None:
        measure(ctx)

    def analyze(self, ctx: StudyContext) -> FleetResult:
        return analyze(ctx)

    def conclusions(self, result: FleetResult) -> str:
        return conclusions(result)


# ---- tables -----------------------------------------------------------------------------------------------
def scaling_display(res: FleetResult) -> pd.DataFrame:
    from perfkit.report.page import format_table

    t = res.scaling
    if t.empty:
        return t
    eff = {int(r["clients_per_server"]): (res.figures.get(f"fleet/efficiency/{int(r['clients_per_server'])}"))
           for _, r in t.iterrows()}
    t = t.assign(efficiency_text=[eff[int(c)].text() if eff.get(int(c)) is not None and tg == "proxy" else "—"
                                  for c, tg in zip(t["clients_per_server"], t["target"])])
    return format_table(t, {"clients_per_server": "clients per server", "target": "target", "clients": "clients",
                            "tok_s_text": "output throughput", "efficiency_text": "scaling efficiency",
                            "ttft_p50": "TTFT p50", "ttft_p99": "TTFT p99", "e2e_p50": "e2e p50",
                            "achieved_concurrency": "achieved clients"})


def balance_display(res: FleetResult) -> pd.DataFrame:
    from perfkit.report.page import format_table

    b = res.balance
    if b.empty:
        return b
    return format_table(b.assign(**{"configured share": b["configured share"].map(fmt.pct)}),
                        {"server": "server", "weight": "weight", "configured share": "configured share",
                         "requests": "requests", "share": "share", "matches weights": "matches"},
                        ci={"share": ("share_lo", "share_hi")})


def overhead_display(res: FleetResult) -> pd.DataFrame:
    o = res.overhead
    if o.empty:
        return o
    rows = [{"buffering": r["buffering"], "pairs": r["n"], "TTFT direct": r["ttft_direct"], "TTFT proxy": r["ttft_proxy"],
             "added TTFT": f"{_signed(r['added_ttft_s'])} [{_signed(r['added_ttft_lo'])}, {_signed(r['added_ttft_hi'])}]",
             "added e2e": f"{_signed(r['added_e2e_s'])} [{_signed(r['added_e2e_lo'])}, {_signed(r['added_e2e_hi'])}]",
             "first token held back": {True: "yes", False: "no", None: "unknown"}[r["first_token_held_back"]]}
            for _, r in o.iterrows()]
    return pd.DataFrame(rows).set_index("buffering")


def cold_display(res: FleetResult) -> pd.DataFrame:
    c = res.cold_upstream
    if c.empty:
        return c
    return pd.DataFrame({"server": c["server"], "cold": c["cold"].map({True: "yes", False: "no"}),
                         "requests": c["requests"], "first TTFT": c["first_ttft_s"].map(fmt.duration),
                         "TTFT p50": c["ttft_p50"], "TTFT max": c["ttft_max_s"].map(fmt.duration)}).set_index("server")


def hosts_display(res: FleetResult) -> pd.DataFrame:
    h = res.hosts
    if h.empty:
        return h
    return pd.DataFrame({"server": h["server"], "phase": h["phase"], "samples": h["samples"],
                         "server CPU mean": h["server_cpu_pct_mean"].map(lambda x: f"{x:.0f}% of a core"),
                         "server CPU max": h["server_cpu_pct_max"].map(lambda x: f"{x:.0f}%"),
                         "server memory max": h["server_rss_bytes_max"].map(fmt.size),
                         "processes": h["server_processes_max"],
                         "GPU utilization": h["gpu_util_pct_mean"].map(
                             lambda x: fmt.NA if pd.isna(x) else f"{x:.0f}%")}).set_index(["server", "phase"])


def cold_disk_display(res: FleetResult) -> pd.DataFrame:
    c = res.cold_disk
    if c.empty:
        return c
    return pd.DataFrame({"server": c["server"],
                         "file in page cache at send": c["file_in_page_cache"].map(
                             lambda x: fmt.NA if x is None or pd.isna(x) else fmt.pct(x)),
                         "first TTFT": c["ttft_s"].map(fmt.duration), "load (server)": c["load_s"].map(fmt.duration),
                         "end to end": c["e2e_s"].map(fmt.duration),
                         "outcome": [("answered" if ok else f"failed: {error_summary(e)}")
                                     for ok, e in zip(c["ok"], c["error"])]}
                        ).set_index("server")


def timeline_display(res: FleetResult, server: str) -> pd.DataFrame:
    t = res.timelines.get(server)
    if t is None or t.empty:
        return pd.DataFrame()
    u = float(t["clock_uncertainty_s"].iloc[0])
    return pd.DataFrame({f"time (± {fmt.duration(u)})" if u else "time": t["t_s"].map(
                             lambda x: fmt.NA if pd.isna(x) else f"{x:+.3f} s"),
                         "phase": t["phase"], "event": t["kind"], "what": t["what"]}).reset_index(drop=True)


def clocks_display(res: FleetResult) -> pd.DataFrame:
    nodes = (res.cluster or {}).get("nodes") or {}
    rows = [{"node": n, "role": d.get("role"), "host name": d.get("hostname"), "perfkit": d.get("perfkit_version"),
             "clock offset": _signed(d["clock"]["offset_ns"] * 1e-9),
             "uncertainty": "± " + fmt.duration(d["clock"]["uncertainty_s"]),
             "round trips": d["clock"]["round_trips"]} for n, d in nodes.items()]
    return pd.DataFrame(rows).set_index("node") if rows else pd.DataFrame()


# ---- text ----------------------------------------------------------------------------------------
_LABELS = {"requests": "requests", "ok": "answered", "failed": "failed", "failure_classes": "failure classes",
           "victim": "killed server", "sent_after_kill": "requests sent after the kill",
           "proxy_tries_on_dead_server": "proxy tries on the dead server (access log)",
           "retried_elsewhere_ok": "of those, retried on another server and answered",
           "last_try_on_dead_server_s_after_kill": "last try on the dead server after the kill",
           "access_log_entries": "access-log entries read", "configured_read_timeout_s": "proxy_read_timeout configured",
           "cold_n": "cold starts measured", "cold_ttft_p50": "cold-start TTFT p50", "cold_ttft_max_s": "longest cold start (TTFT)",
           "recommended_read_timeout_s": "recommended proxy_read_timeout", "basis": "basis of the advice",
           "seed_config_statuses": "as configured: two identical requests", "server_accel_buffering": "server's X-Accel-Buffering",
           "status_counts": "cache status of the requests", "header": "proxy reports cache status",
           "hit_ratio": "hit ratio", "hit_ttft": "hit TTFT", "hit_e2e": "hit end to end",
           "hit_itl_p50_s": "hit ITL p50", "miss_ttft": "miss TTFT", "miss_e2e": "miss end to end",
           "miss_over_hit_e2e": "miss ÷ hit, end to end", "options_differ_status": "same prompt, one option changed",
           "sampled_distinct_via_cache": "distinct sampled answers through the cache",
           "sampled_distinct_direct": "distinct sampled answers from the server", "sampled_n": "sampled requests each",
           "stale": "after a model change", "note": "note"}


def _show(key: str, v: Any) -> str:
    if isinstance(v, float) and (key.endswith("_s") or key.endswith("_s_after_kill")):
        return fmt.duration(v)
    if isinstance(v, dict) and v.get("stat") == "share":
        return f"{fmt.pct(v['value'])} [{fmt.pct(v['lo'])}, {fmt.pct(v['hi'])}] (n={v['n']}, {v['method']})"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {x}" for k, x in v.items()) or "none"
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return "; ".join(", ".join(f"{k} {x}" for k, x in d.items()) for d in v)
    if isinstance(v, list):
        return " then ".join(map(str, v))
    return fmt.number(v) if isinstance(v, float) else str(v)


def details(res: FleetResult, part: str) -> pd.DataFrame:
    """One phase's summary (failover, timeout, cache) as a two-column table for the report."""
    d = getattr(res, part, None) or {}
    rows = [{"figure": _LABELS.get(k, k.replace("_", " ")), "value": _show(k, v)} for k, v in d.items()
            if k not in ("probes", "hit_ratio_est")]
    for p in d.get("probes", []):
        rows.append({"figure": f"proxy_read_timeout {fmt.duration(p['proxy_read_timeout_s'])} ({p['probe']})",
                     "value": p["outcome"]})
    return pd.DataFrame(rows).set_index("figure") if rows else pd.DataFrame()
def _ms(x: float) -> str:
    return fmt.duration(x)


def _signed(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return ("+" if x >= 0 else "−") + fmt.duration(abs(x))


def answer(res: FleetResult) -> list[str]:
    """How well the servers scale behind the proxy and what the proxy costs (at most three sentences)."""
    n, out = len(res.fleet.get("servers", [])), []
    eff = [f for f in res.figures.values() if f.metric == "efficiency"]
    if eff:
        top = max(eff, key=lambda f: int(f.where.get("clients_per_server", 0)))
        cps = int(top.where.get("clients_per_server", 0))
        thr = next((f for f in res.figures.values() if f.metric == "throughput" and f.where.get("target") == "proxy"
                    and int(f.where.get("clients", 0)) == n * cps), None)
        out.append(f"{n} servers behind the proxy serve {thr.link() if thr is not None else fmt.NA} at {n * cps} "
                   f"clients: {top.link(fmt.pct(top.value))} of {n} × one server's throughput at {cps} "
                   f"client{'s' if cps != 1 else ''}.")
    over = [f for f in res.figures.values() if f.metric == "proxy_overhead"]
    if over:
        out.append("The proxy adds " + ", ".join(f"{f.link()} ({f.where.get('buffering')})" for f in over)
                   + " to the time to first token.")
    fo = res.failover or {}
    if fo.get("failed") is not None and fo.get("requests"):
        out.append(f"With one server killed mid-run, {fo['failed']} of {fo['requests']} requests failed.")
    return out


def conclusions(res: FleetResult) -> str:
    f = res.fleet
    n = len(f.get("servers", []))
    lines = [answer_block(answer(res), res.failures) + "### What the measurements say",
             f"- **Fleet**: {n} servers behind {'nginx ' + str(f.get('proxy_version')) + ' started by perfkit' if f.get('managed') else 'your proxy at ' + str(f.get('proxy_url'))}"
             f" (weights {', '.join(str(s['weight']) for s in f.get('servers', []))})."]
    t = res.scaling
    if len(t):
        p = t[t["target"] == "proxy"]
        for _, r in p.iterrows():
            d = t[(t["clients_per_server"] == r["clients_per_server"]) & (t["target"] == "direct")]
            fe = res.figures.get(f"fleet/efficiency/{int(r['clients_per_server'])}")
            eff = fe.text() if fe is not None else fmt.NA
            lines.append(f"- **Scaling** with {r['clients_per_server']} client(s) per server: {r['tok_s_text']} through "
                         f"the proxy over {n} servers at {r['clients']} clients, against "
                         f"{d['tok_s_text'].iloc[0] if len(d) else 'n/a'} from one server at {r['clients_per_server']}: "
                         f"efficiency {eff} (fleet ÷ {n} × one server; 1 = perfect).")
        if f.get("cores") and f.get("threads_per_server"):
            lines.append(f"- On this machine {n} servers × {f['threads_per_server']} thread(s) share {f['cores']} cores "
                         "with the client and nginx: where they fill the cores, scaling is bounded by the machine, "
                         "not by the proxy.")
        bound = t[t["client_bound"]]
        if len(bound):
            lines.append(f"- The client's self-check in {len(bound)} scaling series: {bound['client_check'].iloc[0]}.")
    b = res.balance
    if len(b):
        parts = [f"{r['server']} {fmt.pct(r['share'])} [{fmt.pct(r['share_lo'])}, {fmt.pct(r['share_hi'])}] "
                 f"(weight {r['weight']}: {fmt.pct(r['configured share'])})" for _, r in b.iterrows()]
        verdict = "matches the weights" if b["matches weights"].all() else "does not match the weights"
        lines.append(f"- **Balance** (from {res.balance_source}, {int(b['requests'].sum())} requests): "
                     + "; ".join(parts) + f": the split {verdict} at 95% confidence.")
    else:
        lines.append(f"- **Balance**: {res.balance_source}.")
    for _, r in res.overhead.iterrows():
        held = {True: "the first token **was held back** until the response was complete",
                False: "streaming survives (first token not held back)", None: "held back: unknown"}[r["first_token_held_back"]]
        sh = r["added_ttft"]
        span = f"{_signed(r['added_ttft_s'])} [{_signed(r['added_ttft_lo'])}, {_signed(r['added_ttft_hi'])}]"
        if sh.has_ci and sh.hi < 0:
            what = (f"⚠ **suspect data**: proxied requests measured faster than direct ones ({span} TTFT), which a "
                    "proxy in the path can't be; the direct and proxied requests did not see the same server state")
        elif sh.has_ci and sh.lo <= 0 <= sh.hi:
            what = f"no overhead detectable at this n ({span} TTFT: the CI includes 0)"
        elif sh.has_ci:
            what = f"{span} added to TTFT"
        else:
            what = f"{span} TTFT (no CI at this n: no claim either way)"
        lines.append(f"- **Proxy overhead** (buffering {r['buffering']}, n={r['n']} pairs): {what}; "
                     f"{_signed(r['added_e2e_s'])} [{_signed(r['added_e2e_lo'])}, {_signed(r['added_e2e_hi'])}] end to "
                     f"end; {held}.")
    cu = res.cold_upstream
    if len(cu):
        c = cu[cu["cold"]]
        w = cu[~cu["cold"]]
        if len(c):
            lines.append(f"- **A cold server** behind the proxy: the first request it got waited "
                         f"{_ms(c['first_ttft_s'].iloc[0])} for its first token (the load), against a TTFT p50 of "
                         f"{w['ttft_p50'].iloc[0] if len(w) else 'n/a'} on the warm one{'s' if len(w) > 1 else ''}.")
    cd = res.cold_disk
    cold = cd[cd["cold"]] if len(cd) else cd
    if len(cold):
        parts = [f"{r['server']} {_ms(r['ttft_s'])} to the first token ({fmt.pct(r['file_in_page_cache'])} of the file "
                 "in its host's page cache at the send)" if r["ok"] else f"{r['server']} failed ({r['error']})"
                 for _, r in cold.iterrows()]
        lines.append("- **A cold disk on each server's own host** (the model unloaded everywhere, memory released, "
                     "the file evicted there; one request each, n=1 per server, so no CI): " + "; ".join(parts) + ".")
    for _, r in (cd[~cd["cold"]] if len(cd) else cd).iterrows():
        lines.append(f"- **No cold disk on {r['server']}**: {fmt.pct(r['file_in_page_cache'])} of the model file stayed "
                     "in its host's page cache after the eviction (another process holds it), so its first request "
                     f"({_ms(r['ttft_s'])}) is not a cold-disk figure.")
    if len(res.hosts):
        busiest = res.hosts.sort_values("server_cpu_pct_mean").iloc[-1]
        lines.append(f"- **Each server's host**, as its own host sampled it ({res.hosts['server'].nunique()} "
                     f"server(s)): the busiest was {busiest['server']} in {busiest['phase']}, its process tree at "
                     f"{busiest['server_cpu_pct_mean']:.0f}% of a core on average; per phase in the hosts table.")
    nodes = (res.cluster or {}).get("nodes") or {}
    if nodes:
        worst = max(d["clock"]["uncertainty_s"] for d in nodes.values())
        lines.append(f"- **One clock**: {len(nodes)} cluster node(s), each clock's offset measured from "
                     f"{next(iter(nodes.values()))['clock']['round_trips']} round trips; every time a node stamped "
                     f"(its samples, its log, its requests) is on the run's clock within ± {fmt.duration(worst)} (the "
                     "widest).")
    st = res.settings
    if len(st) and "status" in st:
        per = []
        for server, g in st.groupby("server", sort=False):
            bad = g[g["status"] == "not applied"]
            unver = g[g["status"] == "unverifiable"]
            per.append(f"{server}: " + (", ".join(f"{r['name']} {r['wanted']} **not applied** (runs "
                                                   f"{r['effective']})" for _, r in bad.iterrows()) or
                                        f"{(g['status'] == 'confirmed').sum()} of {len(g)} confirmed")
                       + (f" ({len(unver)} unverifiable: {unver['evidence'].iloc[0]})" if len(unver) else ""))
        lines.append("- **Settings on each host** (asked of each server, its log or its process): "
                     + "; ".join(per) + ".")
    for a in res.agents_closed:
        if isinstance(a.get("restore_failed"), str):
            lines.append(f"- ⚠ **{a['host']}: the user's server did not get its own settings back** at the end "
                         f"({a['restore_failed']}); the host's watchdog and the next perfkit there try again.")
    fo = res.failover
    if fo.get("victim"):
        lines.append(f"- **A server killed mid-run** ({fo['victim']}): {fo['failed']} of {fo['requests']} requests failed"
                     + (f" ({'; '.join(f'{k} ×{v}' for k, v in fo['failure_classes'].items())})" if fo["failed"] else "")
                     + f"; the proxy tried the dead server {fo['proxy_tries_on_dead_server']} time(s) after the kill, "
                     f"{fo['retried_elsewhere_ok']} of them retried on another server successfully; its last try came "
                     f"{_ms(fo['last_try_on_dead_server_s_after_kill'])} after the kill. Every response before and after "
                     f"was kept ({fo['ok']} ok).")
    to = res.timeout
    if "recommended_read_timeout_s" in to:
        lines.append(f"- **Timeout advice**: cold-start TTFT p50 {to['cold_ttft_p50']}, longest "
                     f"{_ms(to['cold_ttft_max_s'])}. Set `proxy_read_timeout` ≥ **{to['recommended_read_timeout_s']:.0f} s** "
                     f"(2 × {to['basis']}); configured: {to['configured_read_timeout_s']:g} s.")
    for p in to.get("probes", []):
        lines.append(f"- **Proxy timeout** {_ms(p['proxy_read_timeout_s'])} ({p['probe']}), a cold request: "
                     f"**{p['outcome']}**.")
    ca = res.cache
    if ca:
        if not ca.get("header"):
            lines.append("- **Response cache**: unknown, because the proxy sends no X-Cache-Status header (a proxy "
                         "without a cache sends none; one with a cache needs `add_header X-Cache-Status "
                         "$upstream_cache_status always;`).")
        else:
            if ca.get("seed_config_statuses") and "HIT" not in ca["seed_config_statuses"]:
                lines.append(f"- ⚠ **A plain nginx cache configuration cached nothing**: two identical requests were "
                             f"{' then '.join(ca['seed_config_statuses'])}"
                             + (", because the server sends `X-Accel-Buffering: no`, which turns nginx's buffering "
                                "and with it the cache off per response; `proxy_ignore_headers X-Accel-Buffering;` "
                                "fixes it (used below)." if ca.get("server_accel_buffering") == "no" else "."))
            hr = ca["hit_ratio"]
            lines.append(f"- **Response cache**: hit ratio {fmt.pct(hr['value'])} [{fmt.pct(hr['lo'])}, "
                         f"{fmt.pct(hr['hi'])}] of {ca['requests']} requests; a hit took {ca.get('hit_e2e', 'n/a')} "
                         f"end to end vs a miss {ca.get('miss_e2e', 'n/a')}. A hit replays the stored stream in one "
                         f"burst (ITL p50 {_ms(ca.get('hit_itl_p50_s', math.nan))}): token timing through a cache is "
                         "not the server's.")
            if ca.get("options_differ_status"):
                lines.append(f"- The same prompt with one sampling option changed was a **{ca['options_differ_status']}**: "
                             "the key is the whole body, so any option change is another entry.")
            if "sampled_distinct_direct" in ca:
                lines.append(f"- ⚠ **Unsafe with temperature > 0**: {ca['sampled_n']} sampled requests gave "
                             f"{ca['sampled_distinct_direct']} different answers from the server and "
                             f"{ca['sampled_distinct_via_cache']} through the cache: identical prompts should not get "
                             "identical answers. Cache only greedy (temperature 0) requests.")
            st = ca.get("stale")
            if st:
                lines.append(f"- ⚠ **Stale answers**: after the model behind the name changed, the server's answer "
                             f"{'changed' if st['server_answer_changed'] else 'did not change'} but the proxy answered "
                             f"{st['proxy_status']} with the {'old' if st['proxy_answer_is_old_model'] else 'new'} model's "
                             "text: purge the cache (or key it on the model digest) whenever a model changes.")
    for s in res.skipped:
        lines.append(f"- {s['phase'].replace('_', ' ').capitalize()}: {s['why']}.")
    for h in res.hosts_lost:
        lines.append(f"- ⚠ **Host {h['server']} was lost** during the run ({h['why']}): its samples and log end there; "
                     "the figures after it that needed its agent are missing, not estimated.")
    if res.failures:
        lines.append("- " + res.failures + " (the failover and timeout phases fail requests on purpose).")
    lines += ["", method_note(res.manifest, "Throughput CI: batch means inside each series' steady-state "
                                                "window; added latency: Hodges–Lehmann shift with Moses CI; shares: "
                                                "Clopper–Pearson.")]
    return "\n".join(lines)
