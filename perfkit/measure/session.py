"""A measuring session: the server started (a kind perfkit starts itself) or reached (a user's server), the
resource monitor, the runner and the manifest; on exit everything perfkit started is stopped, a user's server
perfkit restarted gets its own settings back and the server's log written meanwhile is kept beside the data,
error or not."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from perfkit import kinds
from perfkit.client.backends import Backend
from perfkit.core import host
from perfkit.core.clock import utc_now
from perfkit.core.errors import PerfkitError
from perfkit.core.clock import now_ns
from perfkit.core.events import (AgentClosed, ClockAnchor, PrefixCacheEmptied, RestoreFailed, ServerLogKept,
                                  ServerRecovered, ServerRestarted, ServerRestored)
from perfkit.core.schema import BackendParams, SamplingParams, TelemetryParams, Timeouts
from perfkit.core.settings import KEEP_ALIVE, name_of, server_settings, validate_settings
from perfkit.core.store import RunStore
from perfkit.measure.runner import Runner
from perfkit.sampling import Monitor
from perfkit.servers.control import HostView, PrefixCacheReset, WallClock
from perfkit.servers.serverlog import source_of
RESTORE_RECORD = "restore.json"  # how to give a user's server its own settings back, while perfkit has changed them


@dataclass
class Target:
    """What a session measures against and how: the backend section, timeouts and sampling of a run's
    parameters, the embedded model store, and where the run's logs go."""

    backend: BackendParams
    timeouts: Timeouts
    sampling: SamplingParams
    models_dir: Path
    log_dir: Path
    progress: bool = False
    telemetry: TelemetryParams = field(default_factory=TelemetryParams)


@dataclass
class Session:
    backend: Backend
    runner: Runner
    monitor: Monitor
    engine: Any  # the server perfkit started (a kind's start_server), None for a user's
    store: RunStore
    base_settings: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def control(self):
        return self.backend.control

    def restart(self, settings: Mapping[str, Any]) -> None:
        """Restart the server with ``base settings + settings`` (a server setting needs a restart); settings that
        differ only in request options (``think``) are used without one."""
        merged = {**self.base_settings, **settings}
        if server_settings(merged) == server_settings(self.settings):
            self.settings = merged
            return
        info = self.control.restart(merged)
        self.settings = merged
        self.store.emit(ServerRestarted(settings=merged, **info.as_dict()))


@contextmanager
def session(target: Target, store: RunStore, *, name: str, settings: Mapping[str, Any] | None = None,
            keep_alive_s: float | None = None, models: Sequence[str] = (),
            manifest: Mapping[str, Any] | None = None, server_metrics: bool = False, shares=None,
            cluster=None) -> Iterator[Session]:
    """Start (or reach) the server with ``base settings + settings``, the monitor and the runner.

    ``server_metrics``: read the embedded engine's own ``/metrics`` (queue, slots, prompt cache) through the
    session, for studies that send load; the others time single requests and have no queue to read. A read
    running during a request did not move it measurably (bench/telemetry.py: TTFT with ÷ without a read 0.988
    [0.959, 1.024] at 4 reads/s, decode 0.977 [0.952, 1.005] at 1 read/s, on 2 cores).
    ``keep_alive_s``: how long a model stays loaded after a request; sent with every request where the API
    takes it per request, else applied as the server's keep-alive setting. ``models``: described
    in the manifest; ``manifest``: more fields for it (the study, its parameters). ``shares``: load series
    sent from client nodes (``perfkit.cluster.ClientShares``) instead of this process. ``cluster``: the run's
    ``perfkit.cluster.Cluster`` when ``backend.host`` names the server's node: its agent there is the controller,
    samples the server's host, and is released when the session ends.
    """
    b = target.backend
    kind = kinds.get(b.kind)
    settings = dict(settings or {})
    keep_alive = None
    if keep_alive_s is not None:
        if kind.capabilities.keep_alive_per_request:
            keep_alive = keep_alive_s
        else:
            settings = {name_of(KEEP_ALIVE): keep_alive_s, **settings}
    base = dict(b.settings)
    merged = validate_settings({**base, **settings}, where="settings")
    engine = kind.start_server(target.models_dir, merged, log_path=target.log_dir / f"{name}-engine.log",
                               ready_timeout_s=b.ready_timeout_s)
    backend = monitor = log_mark = agent = None
    try:
        if b.host is not None:
            if cluster is None:
                raise PerfkitError(f"backend.host {b.host}: no cluster to reach its agent through (cluster:)")
            # The agent opens the server on its host, restarting it with the settings where they differ.
            agent = cluster.agent(b.host, {"kind": b.kind, "url": b.url, "restart_command": b.restart_command,
                                           "server_log": b.server_log.model_dump() if b.server_log else None,
                                           "ready_timeout_s": b.ready_timeout_s}, merged if settings else {})
        backend = kind.create_backend(b.url, engine=engine, headers=b.headers, endpoint=b.endpoint,
                                      restart_command=b.restart_command,
                                      log=source_of(b.server_log) if agent is None else None,
                                      ready_timeout_s=b.ready_timeout_s, control=agent)
        if agent is None:
            backend.control.restore_record = store.dir / RESTORE_RECORD
            recovered = backend.control.recover()  # a run that died left it on its settings: theirs first
            if recovered is not None:
                store.emit(ServerRecovered(**recovered.as_dict()))
            if engine is None and settings and backend.control.can_restart():
                backend.control.restart(merged)
        if isinstance(backend.control, PrefixCacheReset):  # what an earlier run left cached is not this run's
            store.emit(PrefixCacheEmptied(result=backend.control.reset_prefix_cache()))
        log = backend.control.log_source()
        # The engine's log is this session's own file: keep it from its first line (its start marks).
        log_mark = (0 if engine is not None else log.mark()) if log else None
        store.emit(ClockAnchor(wall_unix_s=time.time(), t_ns=now_ns()))
        pids = backend.control.server_pids
        host_view = backend.control.view if isinstance(backend.control, HostView) else None
        telemetry = telemetry_samplers(target, backend if server_metrics else None, models)
        if host_view is not None:
            from perfkit.sampling.view import ViewSampler

            telemetry.append(ViewSampler(host_view(target.sampling.interval_s, target.sampling.gpu),
                                         max(0.25, target.sampling.interval_s)))
        monitor = Monitor(target.sampling.interval_s, pids if backend.control.is_local else None,
                          gpu=target.sampling.gpu and host_view is None,
                          system=target.sampling.system and host_view is None, store=store, telemetry=telemetry,
                          server_gpus=target.telemetry.gpus)
        monitor.start()
        if target.sampling.idle_baseline_s:
            monitor.measure_idle(target.sampling.idle_baseline_s)
        runner = Runner(backend, store, timeout_s=target.timeouts.request_s, stall_timeout_s=target.timeouts.stall_s,
                        monitor=monitor, progress=target.progress, keep_alive=keep_alive)
        runner.shares = shares
        if shares is not None:
            manifest = {**(manifest or {}), "client_nodes": shares.describe()}
        write_manifest(store, backend=backend, engine=engine, monitor=monitor, models=models, extra=manifest)
        yield Session(backend, runner, monitor, engine, store, base, dict(merged))
    finally:
        if monitor is not None:
            monitor.stop()
        if backend is not None:
            _keep_server_log(store, backend, log_mark)
            try:
                info = backend.control.restore()
                if info:
                    store.emit(ServerRestored(**info.as_dict()))
            except Exception as e:  # noqa: BLE001 - recorded; the measured data is safe already
                store.emit(RestoreFailed(error=str(e)))
        store.write_manifest(ended_utc=utc_now(), sampling_unavailable=monitor.unavailable if monitor else {},
                             **({"sampling_sources": monitor.sources()} if monitor else {}))
        if backend is not None:
            backend.close()
        if agent is not None:
            store.emit(AgentClosed(host=b.host, **cluster.release(b.host)))
        if engine is not None:
            engine.stop()


def telemetry_samplers(target: Target, backend: Backend | None, models: Sequence[str]) -> list:
    """The telemetry sources the parameters name (a Prometheus, exporter endpoints) and the server's own
    ``/metrics`` where its kind knows them (``backend``: None for a study that sends no load)."""
    from perfkit.sampling.prometheus import PrometheusClient, PrometheusError, PrometheusSampler, discover, one_host
    from perfkit.sampling.scrape import ScrapeSampler, ScrapeTarget

    t, out = target.telemetry, []
    if t.prometheus is not None:
        pr = t.prometheus
        client = PrometheusClient(pr.url, pr.all_headers())
        try:
            found = discover(client, pr.selectors())
        except PrometheusError as e:
            raise PerfkitError(f"telemetry.prometheus: {e}") from None
        finally:
            client.close()
        several = one_host(found)
        if several:
            raise PerfkitError(several)
        resolution = pr.scrape_interval_s or min((f.interval_s for f in found.values() if f.interval_s), default=None)
        if resolution is None:
            raise PerfkitError("telemetry.prometheus: the labels select no series with two samples yet, so the "
                               "scrape interval is unknown; set telemetry.prometheus.scrape_interval_s")
        collect = found["gpu"].collect_interval_s if "gpu" in found else None
        out.append(PrometheusSampler(pr.url, pr.selectors(), headers=pr.all_headers(), resolution_s=resolution,
                                     collect_interval_s=collect))
    if t.scrape:
        out.append(ScrapeSampler([ScrapeTarget([u], dict(t.scrape_headers)) for u in t.scrape],
                                 t.scrape_every_s(target.sampling.interval_s)))
    urls = backend.metrics_urls(list(dict.fromkeys(models))) if backend is not None and t.engine_metrics else []
    if urls:
        out.append(ScrapeSampler([ScrapeTarget(urls, absent_ok=(400, 404), source="engine")], t.engine_interval_s,
                                 source="engine"))
    return out


def _keep_server_log(store: RunStore, backend: Backend, mark) -> None:
    """Append the server log written during the session to ``server.log`` in the store (read at analysis)."""
    log = backend.control.log_source()
    if log is None:
        store.emit(ServerLogKept(available=False, why=backend.control.why_not_local()
                                 if not backend.control.is_local else "no server log was given (backend.server_log)"))
        return
    try:
        lines = log.read_since(mark)
    except Exception as e:  # noqa: BLE001 - a missing log never costs the measured data
        store.emit(ServerLogKept(available=False, why=f"reading {log.describe()} failed: {e}"))
        return
    with open(store.dir / "server.log", "a") as f:
        f.writelines(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
    clock = backend.control.clock if isinstance(backend.control, WallClock) else None  # a log from another host
    store.emit(ServerLogKept(available=True, source=log.describe(), lines=len(lines),
                             wall_offset_s=clock.wall_offset_s if clock is not None else None,
                             clock_uncertainty_s=clock.uncertainty_ns * 1e-9 if clock is not None else None))


def write_manifest(store: RunStore, *, backend: Backend | None = None, engine: Any = None,
                   monitor: Monitor | None = None, models: Sequence[str] = (),
                   extra: Mapping[str, Any] | None = None) -> dict:
    """The provenance of a study's data (pyperf-style metadata): host, versions, the backend and its
    controller, the engine command, each model's facts, what was sampled; ``extra`` adds fields (the study,
    its parameters). One writer for every study."""
    facts: dict[str, Any] = {}
    if backend is not None:
        for model in dict.fromkeys(models):
            try:
                facts[model] = backend.model_facts(model).__dict__
            except Exception as e:  # noqa: BLE001 - recorded; the study itself will fail loudly
                facts[model] = {"error": str(e)}
    m = store.manifest()
    fields: dict[str, Any] = {
        "started_utc": m.get("started_utc", utc_now()), "perfkit_version": host.versions().get("perfkit"),
        "host": host.info(), "engine_command": engine.command if engine else m.get("engine_command")}
    if backend is not None:
        fields.update(control=backend.control.describe(), backend=backend.describe(), models=facts)
    if monitor is not None:
        fields.update(sampling_interval_s=monitor.interval_s, gpus_sampled=monitor.gpu.devices if monitor.gpu else [],
                      sampling_sources=monitor.sources())
    fields.update(extra or {})
    return store.write_manifest(**fields)
