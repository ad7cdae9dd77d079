"""The fleet the study measures, set up: perfkit's own engines and nginx, servers on other hosts driven by their
agents with nginx here, or a user's proxy and servers; and the clients and views every phase uses on it."""

from __future__ import annotations

import os
from typing import Any

from perfkit import kinds
from perfkit.client.backends import Backend
from perfkit.core.settings import THREADS, role_of
from perfkit.servers.control import HostView
from perfkit.servers.fleet import FLEET_MODEL, Fleet, Server
from perfkit.studies.base import StudyContext


def build_fleet(ctx: StudyContext) -> Fleet:
    c = ctx.cfg
    if c.server_urls:
        return Fleet.external(c.proxy_url, c.server_urls, c.weight_list())
    pc = c.proxy
    proxy = dict(proxy_read_timeout_s=pc.read_timeout_s, buffering=pc.buffering, keepalive=pc.keepalive,
                 max_fails=pc.max_fails, fail_timeout_s=pc.fail_timeout_s)
    if c.hosts:
        return _on_hosts(ctx, proxy)
    cores = os.cpu_count() or 1
    threads = max(1, cores // c.servers)  # fair: every server gets the same share, none more than the machine
    settings = {k: v for k, v in ctx.params.backend.settings.items() if role_of(k) != THREADS}
    kind = kinds.get(ctx.params.backend.kind)
    b = ctx.params.backend
    fleet = Fleet.embedded(ctx.models_dir, c.model, ctx.store.dir, servers=c.servers, weights=c.weight_list(),
                           threads=threads, settings=settings, proxy=proxy, log_dir=ctx.run_dir / "logs",
                           start=lambda d, s, log: kind.start_server(d, s, log_path=log,
                                                                     ready_timeout_s=b.ready_timeout_s))
    for s in fleet.servers:  # on this host: perfkit sees its own engines whole
        s.control = kinds.create(ctx.params.backend.kind, engine=s.engine).control
    return fleet


def _on_hosts(ctx: StudyContext, proxy: dict[str, Any]) -> Fleet:
    c = ctx.cfg
    cluster = ctx.cluster()
    servers = []
    try:
        for h, w in zip(c.hosts, c.weight_list()):
            ctl = cluster.agent(h.host, {"kind": c.api, **h.model_dump(mode="json")},
                                dict(ctx.params.backend.settings))
            servers.append(Server(h.url, w, control=ctl, host=h.host))
        return Fleet.on_hosts(servers, ctx.store.dir, proxy_url=c.proxy_url, proxy=proxy)
    except BaseException:
        cluster.close()
        raise


def model_name(ctx: StudyContext, fleet: Fleet) -> str:
    """The name requests ask for: perfkit's engines serve the model under one fixed name (so it can be swapped)."""
    return FLEET_MODEL if fleet.servers[0].engine is not None else ctx.cfg.model


def client(ctx: StudyContext, url: str) -> Backend:
    """The measuring client: the same wire for direct and proxied requests, so the difference is the proxy. A
    fleet's server is seen as a client sees it (its API), never inspected as a local process."""
    return kinds.create(ctx.cfg.api, url, headers=ctx.params.backend.headers, inspect_host=False)


def native_backend(ctx: StudyContext, fleet: Fleet, i: int) -> Backend | None:
    """A backend that can load and unload on server ``i`` (None when its API can't)."""
    s = fleet.servers[i]
    # perfkit's own engines are the run's kind; a user's servers speak the fleet's api
    b = kinds.create(ctx.params.backend.kind if s.engine is not None else ctx.cfg.api, s.url, engine=s.engine,
                     headers=ctx.params.backend.headers, inspect_host=False)
    if b.capabilities.residency:
        return b
    b.close()
    return None


def host_view(s: Server, interval_s: float, gpu: bool) -> Any:
    """A server's host seen where it runs: sampled here when it is this host, by its agent when it is another."""
    if s.control is None:
        return None
    if s.control.is_local:
        from perfkit.sampling.view import LocalView

        return LocalView(s.name, s.control.server_pids, interval_s)
    return s.control.view(interval_s, gpu) if isinstance(s.control, HostView) else None


def safe_name(name: str) -> str:
    """A server's name as a directory name (a host:port has a colon)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
