"""The fleet study as perfkit's registry knows it: its parameters, what it needs before it runs, and its steps."""

from __future__ import annotations

from typing import Any

from perfkit import kinds
from perfkit.servers.nginx import install_hint, nginx_binary
from perfkit.studies.base import Study, StudyContext
from perfkit.studies.registry import register

from .analysis import analyze
from .conclusions import conclusions
from .measurement import measure
from .params import FleetParams
from .results import FleetResult


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
        if not kinds.capabilities(params.backend.kind).started_by_perfkit and not f.server_urls:
            raise ValueError("studies.fleet: with a server of your own (backend kind "
                             f"{params.backend.kind!r}) give fleet.proxy_url and fleet.server_urls; perfkit starts "
                             "engines and nginx only for the embedded backend")

    def preflight(self, params: Any) -> list[str]:
        """A user's fleet: the proxy and every server must answer their API before anything is measured."""
        from perfkit.core.errors import PerfkitError

        f = params.studies.fleet
        out = []
        for key, url in [("studies.fleet.proxy_url", f.proxy_url)] + [
                (f"studies.fleet.server_urls[{i}]", u) for i, u in enumerate(f.server_urls)]:
            if url:
                try:
                    kinds.probe(f.api, url, dict(params.backend.headers), f"{key} {url}", timeout_s=5.0)
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
