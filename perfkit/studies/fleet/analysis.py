"""The fleet study's analysis, from what a run recorded only (no server): each phase read into its table or
summary, and the figures the study stands by."""

from __future__ import annotations

from typing import Any

import pandas as pd

from perfkit.core import events as E
from perfkit.analysis import figures as F, series as S
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import failures
from perfkit.servers.nginx import parse_access_log
from perfkit.studies.base import StudyContext

from .hosts import host_timelines, hosts_table
from .phases.cache import cache_summary
from .phases.cold_disk import cold_disk_table
from .phases.cold_upstream import cold_upstream_table
from .phases.failover import failover_summary
from .phases.overhead import overhead_table
from .phases.scaling import scaling_table
from .phases.timeout import timeout_summary
from .results import AgentClosed, CacheSummary, ClusterNode, FleetResult, FleetSetup, HostLost, SkippedPhase
from .upstreams import balance_table


def analyze(ctx: StudyContext) -> FleetResult:
    c = ctx.cfg
    df, ev, manifest = ctx.store.trials(), ctx.store.events(), ctx.store.manifest()
    fleet = FleetSetup.from_manifest(manifest.get("fleet", {}))
    access_path = ctx.store.dir / "nginx-access.log"
    access = parse_access_log(access_path) if access_path.exists() else []
    bal, bal_source = balance_table(df, fleet.servers) if fleet.servers else (pd.DataFrame(), "no servers recorded")
    n = max(1, len(fleet.servers))
    scaling = scaling_table(df, ev, n)
    overhead = overhead_table(df)
    cache = cache_summary(df)
    wl = {"prompt_words": c.prompt_words, "num_predict": c.num_predict, "servers": n}
    return FleetResult("fleet", _figures(scaling, overhead, cache, wl), df, manifest, failures(df), fleet=fleet,
                       scaling=scaling, balance=bal, balance_source=bal_source, overhead=overhead,
                       cold_upstream=cold_upstream_table(df, fleet.servers), failover=failover_summary(df, ev, access),
                       timeout=timeout_summary(df, fleet.proxy_read_timeout_s or c.proxy.read_timeout_s),
                       cache=cache, skipped=_skipped(ev), clients=S.client_table(ev, df),
                       hosts=hosts_table(ctx.store.samples(), ev), cold_disk=cold_disk_table(df),
                       timelines=host_timelines(ctx.store.dir, ev, df),
                       cluster_nodes=[ClusterNode.from_manifest(k, d) for k, d in
                                      ((manifest.get("cluster") or {}).get("nodes") or {}).items()],
                       hosts_lost=_hosts_lost(ev), settings=E.events_of(ev, E.FleetSettingCheck).dropna(axis=1, how="all"),
                       agents_closed=_agents_closed(ev))


def _figures(scaling: pd.DataFrame, overhead: pd.DataFrame, cache: CacheSummary | None,
             wl: dict[str, Any]) -> FigureSet:
    figs = FigureSet()
    for _, r in scaling.iterrows():
        where = {"target": r["target"], "clients": int(r["clients"])}
        figs.add(F.from_estimate("fleet", "throughput", r["estimate"], where=where, workload=wl))
        if r["target"] == "proxy":
            figs.add(F.from_estimate("fleet", "efficiency", r["efficiency_est"],
                                     where={"clients_per_server": int(r["clients_per_server"])}, workload=wl))
    if len(scaling) and (scaling["target"] == "proxy").any():
        # The headline is the heaviest load per server: where a fleet's scaling is put to the test.
        top = scaling[scaling["target"] == "proxy"]["clients_per_server"].max()
        f = figs.get(f"fleet/efficiency/{int(top)}")
        if f is not None:
            f.headline = "scaling efficiency"
    for _, r in overhead.iterrows():
        figs.add(F.from_estimate("fleet", "proxy_overhead", r["added_ttft"], where={"buffering": r["buffering"]},
                                 workload=wl))
    if cache is not None:
        figs.add(F.from_estimate("fleet", "hit_ratio", cache.hit_ratio, workload=wl))
    return figs


def _skipped(ev: pd.DataFrame) -> list[SkippedPhase]:
    if not (len(ev) and "why" in ev and "kind" in ev):
        return []
    return [SkippedPhase(r["phase"], r["why"]) for r in E.events_of(ev, E.PhaseSkipped)[["phase", "why"]]
            .to_dict("records")]


def _hosts_lost(ev: pd.DataFrame) -> list[HostLost]:
    if not E.any_of(ev, E.HostLost):
        return []
    return [HostLost(r["server"], r["why"]) for r in E.events_of(ev, E.HostLost)[["server", "why"]]
            .to_dict("records")]


def _agents_closed(ev: pd.DataFrame) -> list[AgentClosed]:
    # restore_failed is a string only when the user's settings did not come back; absent or null otherwise.
    return [AgentClosed(a["host"], a["restore_failed"] if isinstance(a.get("restore_failed"), str) else None)
            for a in E.events_of(ev, E.AgentClosed).to_dict("records")]
