"""The fleet study's measurement: the fleet set up and recorded, every phase in order (a resumed run skips those
done), and, whatever happens, each host's samples and log kept and everything perfkit started stopped."""

from __future__ import annotations

import shutil
from typing import Any, Callable

from perfkit.core import events as E
from perfkit.core.clock import utc_now
from perfkit.measure.session import write_manifest
from perfkit.servers.control import Unknown
from perfkit.servers.fleet import Fleet
from perfkit.servers.nginx import install_hint, nginx_version
from perfkit.studies.base import StudyContext

from .fleet_setup import build_fleet
from .phase_run import PhaseRun
from .phases import cache, cold_disk, cold_upstream, failover, overhead, scaling, timeout

STEPS: tuple[tuple[str, Callable[[PhaseRun], None]], ...] = (
    ("scaling", scaling.measure), ("overhead", overhead.measure), ("cold_upstream", cold_upstream.measure),
    ("cold_disk", cold_disk.measure), ("failover", failover.measure), ("timeout", timeout.measure),
    ("cache", cache.measure))
PHASES = tuple(name for name, _ in STEPS)


def measure(ctx: StudyContext) -> None:
    c = ctx.cfg
    if not c.server_urls and nginx_version() is None:
        raise RuntimeError(f"the fleet study needs nginx: {install_hint()}")
    fleet = build_fleet(ctx)
    run = None
    try:
        run = PhaseRun(ctx, fleet)
        # The fleet's own changes (reloads, kills, model swaps) go to the store as they happen.
        fleet.on_event = lambda e: ctx.store.event(f"fleet_{e['kind']}", **{k: v for k, v in e.items() if k != "kind"})
        _record_setup(ctx, fleet, run)
        run.emit(E.ClockAnchor)
        run.warm_all()
        if c.hosts and ctx.params.backend.settings:
            confirm_settings(run, dict(ctx.params.backend.settings))
        for name, fn in STEPS:
            if run.done(name):
                continue
            run.emit(E.PhaseStarted, phase=name)
            fn(run)
            run.drain()
            run.emit(E.PhaseDone, phase=name)
    finally:
        _finish(ctx, fleet, run)


def _record_setup(ctx: StudyContext, fleet: Fleet, run: PhaseRun) -> None:
    unseen = [s.name for s, v in zip(fleet.servers, run.views) if v is None]
    write_manifest(ctx.store, extra={
        "study": "fleet", "fleet": fleet.describe(), "backend": _backend(fleet, run),
        "params": ctx.params.model_dump(mode="json"), "params_file": str(ctx.params_path),
        "sampling_unavailable": {"resources": "servers seen only through their API: "
                                              + ", ".join(unseen)} if unseen else {},
        "hosts_sampled": {s.name: v.unavailable for s, v in zip(fleet.servers, run.views) if v is not None},
        **({"cluster": ctx.cluster().describe()} if ctx.cfg.hosts or ctx.client_shares() else {}),
        "engine_command": fleet.servers[0].engine.command if fleet.servers[0].engine else None})


def _backend(fleet: Fleet, run: PhaseRun) -> dict[str, Any]:
    """The backend as the report names it: the servers, how many, behind which proxy."""
    backend = run.proxy.backend.describe()
    if fleet.servers[0].engine is not None:
        own = run.native(0)  # perfkit's engine as the run's kind describes it
        backend = {"backend": own.name, "version": own.version(),
                   "served_as": f"×{len(fleet.servers)} behind nginx {fleet.nginx.version}",
                   "url": fleet.proxy_url, "client": backend.get("backend")}
    if fleet.managed and fleet.servers[0].engine is None:
        backend = {**backend, "served_as": f"×{len(fleet.servers)} on their hosts behind nginx {fleet.nginx.version}"}
    return backend


def confirm_settings(run: PhaseRun, settings: dict[str, Any]) -> None:
    """Each host's server asked what it runs (its log, its process, its runner), as config tuning asks one server:
    a setting a host did not apply is said per host, not assumed."""
    for s in run.fleet.servers:
        if s.control is None:
            continue
        try:
            checks = s.control.settings_in_effect(settings, run.model)
        except Unknown as e:
            run.emit(E.FleetSettingCheck, server=s.name, unknown_because=str(e))
            continue
        for chk in checks.values():
            run.emit(E.FleetSettingCheck, server=s.name, **chk.as_dict())


def _finish(ctx: StudyContext, fleet: Fleet, run: PhaseRun | None) -> None:
    """After the phases, or after a failure or Ctrl-C among them: what the hosts saw kept, everything stopped."""
    if run is not None:
        run.drain()
        run.keep_logs()
        for v in run.views:
            if v is not None:
                v.stop()
    if fleet.nginx is not None:
        for name in ("access.log", "error.log", "nginx.conf"):
            src = fleet.nginx.prefix / name
            if src.exists():
                shutil.copy(src, ctx.store.dir / f"nginx-{name}")
    fleet.stop()
    if ctx.cfg.hosts:
        # What each agent did at the end: a server stopped, or a user's given its own settings back (or not).
        for host, out in ctx.cluster().close().items():
            ctx.store.emit(E.AgentClosed(host=host, **out))
    ctx.store.write_manifest(ended_utc=utc_now())
