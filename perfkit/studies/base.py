"""What a study needs to run: the validated parameters, its store, and a server session.

A session starts the embedded engine (or connects to Ollama / a remote llama-server), starts the
resource monitor, writes the manifest, and on exit stops all of it, error or not.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from perfkit.core import host
from perfkit.studies import params as params_mod
from perfkit.client.backends import Backend, LlamaServerBackend, OllamaBackend
from perfkit.servers.engine import Engine
from perfkit.core.errors import PerfkitError
from perfkit.servers.models import models_dir
from perfkit.measure.runner import Runner
from perfkit.sampling import Monitor
from perfkit.core.settings import validate_settings
from perfkit.core.records import now_ns
from perfkit.core.store import RunStore

# The engine's log lines carry a time (relative to its start: --log-timestamps needs --log-prefix), so its
# own account can be put on the run's clock; verbosity 4 (what Ollama passes its runner) adds the
# load_tensors and buffer lines.
ENGINE_LOG_ARGS = ("--log-timestamps", "--log-prefix", "-lv", "4")


def _log_source(spec):
    """The server log named in the parameters (a file, or a command such as journalctl), or None."""
    if spec is None:
        return None
    from perfkit.servers.serverlog import CommandLogSource, FileLogSource

    return FileLogSource(spec.file) if spec.file else CommandLogSource(spec.command)


@dataclass
class Session:
    backend: Backend
    runner: Runner
    monitor: Monitor
    engine: Engine | None
    ctx: "StudyContext"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def control(self):
        return self.backend.control

    def restart(self, settings: Mapping[str, Any]) -> None:
        """Restart the server with ``base settings + settings`` (a server setting needs a restart)."""
        merged = {**self.ctx.params.backend.settings, **settings}
        info = self.control.restart(merged)
        self.settings = merged
        self.ctx.store.event("restart", settings=merged, **info.as_dict())


class StudyContext:
    """Args:
        params_path: the YAML parameter file.
        run_dir: the run's directory (``results/<run-id>``); the study writes under ``<run_dir>/<study>``.
        study: one of ``perfkit.params.STUDIES``.
    """

    def __init__(self, params_path: str | Path, run_dir: str | Path, study: str):
        self.params_path = Path(params_path)
        self.params = params_mod.load(self.params_path)
        if study not in params_mod.STUDIES:
            raise PerfkitError(f"unknown study {study!r}; allowed: {', '.join(params_mod.STUDIES)}")
        self.cfg = getattr(self.params.studies, study)
        if self.cfg is None:
            raise PerfkitError(f"{self.params_path}: studies.{study} is not set; this file enables: "
                               f"{', '.join(self.params.enabled()) or 'nothing'}")
        self.study = study
        self.run_dir = Path(run_dir)
        self.store = RunStore(self.run_dir / study)

    @property
    def models_dir(self) -> Path:
        b = self.params.backend
        return Path(b.models_dir).expanduser() if b.models_dir else models_dir()

    def _backend(self, engine: Engine | None, settings: Mapping[str, Any]) -> Backend:
        p = self.params
        if engine is not None:
            return LlamaServerBackend.from_engine(engine)
        if p.backend.kind == "ollama":
            from perfkit.servers.control import ollama_control

            control = ollama_control(p.backend.url, restart_command=p.backend.restart_command,
                                     log=_log_source(p.backend.server_log), headers=p.backend.headers,
                                     ready_timeout_s=p.backend.ready_timeout_s)
            backend: Backend = OllamaBackend(p.backend.url, headers=p.backend.headers, control=control)
            if settings:
                backend.control.restart(settings)
            return backend
        if p.backend.kind == "openai":
            from perfkit.client.backends.openai import OpenAIBackend

            return OpenAIBackend(p.backend.url, endpoint=p.backend.endpoint, headers=p.backend.headers)
        return LlamaServerBackend(p.backend.url)

    @contextmanager
    def session(self, settings: Mapping[str, Any] | None = None, *, keep_alive: object = None) -> Iterator[Session]:
        """Start (or reach) the server with ``base settings + settings``, the monitor and the runner; on
        exit stop what perfkit started, give a restarted Ollama back its own settings, and keep the part
        of the server's log written meanwhile."""
        p = self.params
        merged = validate_settings({**p.backend.settings, **(settings or {})}, where=f"{self.params_path}: settings")
        engine = None
        if p.backend.kind == "embedded":
            engine = Engine(self.models_dir, merged, log_path=self.run_dir / "logs" / f"{self.study}-engine.log",
                            ready_timeout_s=p.backend.ready_timeout_s, extra_args=ENGINE_LOG_ARGS)
            engine.start()
        backend = None
        monitor = None
        log_mark = None
        try:
            backend = self._backend(engine, merged if p.backend.kind == "ollama" and settings else {})
            log = backend.control.log_source()
            # The engine's log is this study's own file: keep it from its first line (its start marks).
            log_mark = (0 if engine is not None else log.mark()) if log else None
            self.store.event("clock", wall_unix_s=time.time(), t_ns=now_ns())
            pids = backend.control.server_pids
            monitor = Monitor(p.sampling.interval_s, pids if backend.control.is_local else None,
                              gpu=p.sampling.gpu, system=p.sampling.system, store=self.store)
            monitor.start()
            if p.sampling.idle_baseline_s:
                monitor.measure_idle(p.sampling.idle_baseline_s)
            runner = Runner(backend, self.store, timeout_s=p.timeouts.request_s, stall_timeout_s=p.timeouts.stall_s,
                            monitor=monitor, progress=p.progress, keep_alive=keep_alive)
            self._manifest(backend, engine, monitor)
            yield Session(backend, runner, monitor, engine, self, dict(merged))
        finally:
            if monitor is not None:
                monitor.stop()
            if backend is not None:
                self._keep_server_log(backend, log_mark)
                restore = getattr(backend.control, "restore", None)
                if restore is not None:
                    try:
                        info = restore()
                        if info:
                            self.store.event("restore", **info.as_dict())
                    except Exception as e:  # noqa: BLE001 - recorded; the measured data is safe already
                        self.store.event("restore_failed", error=str(e))
            self.store.write_manifest(ended_utc=_utc(), sampling_unavailable=monitor.unavailable if monitor else {})
            if backend is not None:
                backend.close()
            if engine is not None:
                engine.stop()

    def _keep_server_log(self, backend: Backend, mark) -> None:
        """Append the server log written during this session to ``<study>/server.log`` (read at analysis)."""
        log = backend.control.log_source()
        if log is None:
            self.store.event("server_log", available=False, why=backend.control.why_not_local()
                             if not backend.control.is_local else "no server log was given (backend.server_log)")
            return
        try:
            lines = log.read_since(mark)
        except Exception as e:  # noqa: BLE001 - a missing log never costs the measured data
            self.store.event("server_log", available=False, why=f"reading {log.describe()} failed: {e}")
            return
        with open(self.store.dir / "server.log", "a") as f:
            f.writelines(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
        self.store.event("server_log", available=True, source=log.describe(), lines=len(lines))

    def _manifest(self, backend: Backend, engine: Engine | None, monitor: Monitor) -> None:
        m = self.store.manifest()
        facts = {}
        for _, model in self.params.models_used():
            if model not in facts:
                try:
                    facts[model] = backend.model_facts(model).__dict__
                except Exception as e:  # noqa: BLE001 - recorded, the study itself will fail loudly
                    facts[model] = {"error": str(e)}
        self.store.write_manifest(
            control=backend.control.describe(),
            study=self.study, started_utc=m.get("started_utc", _utc()), perfkit_version=host.versions().get("perfkit"),
            backend=backend.describe(), engine_command=engine.command if engine else None,
            models=facts, host=host.info(), params=self.params.model_dump(mode="json"),
            params_file=str(self.params_path), sampling_interval_s=self.params.sampling.interval_s,
            gpus_sampled=monitor.gpu.devices if monitor.gpu else [],
        )


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
