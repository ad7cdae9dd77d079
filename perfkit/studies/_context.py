"""What a study needs to run: the validated parameters, its store, and a server session.

A session starts the embedded engine (or connects to Ollama / a remote llama-server), starts the
resource monitor, writes the manifest, and on exit stops all of it, error or not.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import httpx

from .. import host, params as params_mod
from ..backends import Backend, LlamaServerBackend, OllamaBackend
from ..engine import Engine
from ..errors import PerfkitError
from ..models import models_dir
from ..runner import Runner
from ..sampling import Monitor
from ..settings import to_ollama_env, validate_settings
from ..store import RunStore


@dataclass
class Session:
    backend: Backend
    runner: Runner
    monitor: Monitor
    engine: Engine | None
    ctx: "StudyContext"
    settings: dict[str, Any] = field(default_factory=dict)

    def restart(self, settings: Mapping[str, Any]) -> None:
        """Restart the server with ``base settings + settings`` (a server setting needs a restart)."""
        merged = {**self.ctx.params.backend.settings, **settings}
        if self.engine is not None:
            self.engine.restart(merged)
        elif isinstance(self.backend, OllamaBackend):
            self.ctx.restart_ollama(merged)
        else:
            raise PerfkitError("a remote llama-server cannot be restarted by perfkit; use kind: embedded")
        self.settings = merged
        self.ctx.store.event("restart", settings=merged)


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

    def restart_ollama(self, settings: Mapping[str, Any]) -> None:
        b = self.params.backend
        if not b.restart_command:
            raise PerfkitError(f"{self.params_path}: backend.restart_command is needed to apply server settings "
                               "to Ollama (an argument list, run with the settings in its environment)")
        env = {**os.environ, **to_ollama_env(settings)}
        r = subprocess.run(b.restart_command, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise PerfkitError(f"restart command {b.restart_command} failed (exit {r.returncode}): {r.stderr[-300:]}")
        deadline = time.monotonic() + b.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(b.url.rstrip("/") + "/api/version", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise PerfkitError(f"ollama at {b.url} did not come back within {b.ready_timeout_s:g} s after the restart")

    @contextmanager
    def session(self, settings: Mapping[str, Any] | None = None) -> Iterator[Session]:
        p = self.params
        merged = validate_settings({**p.backend.settings, **(settings or {})}, where=f"{self.params_path}: settings")
        engine = None
        if p.backend.kind == "embedded":
            engine = Engine(self.models_dir, merged, log_path=self.run_dir / "logs" / f"{self.study}-engine.log",
                            ready_timeout_s=p.backend.ready_timeout_s)
            engine.start()
            backend: Backend = LlamaServerBackend.from_engine(engine)
        elif p.backend.kind == "ollama":
            if settings:
                self.restart_ollama(merged)
            backend = OllamaBackend(p.backend.url, headers=p.backend.headers)
        else:
            backend = LlamaServerBackend(p.backend.url)
        monitor = Monitor(p.sampling.interval_s, (lambda: [engine.proc.pid] if engine and engine.proc else [])
                          if engine else None, gpu=p.sampling.gpu, system=p.sampling.system, store=self.store)
        try:
            monitor.start()
            if p.sampling.idle_baseline_s:
                monitor.measure_idle(p.sampling.idle_baseline_s)
            runner = Runner(backend, self.store, timeout_s=p.timeouts.request_s, stall_timeout_s=p.timeouts.stall_s,
                            monitor=monitor, progress=p.progress)
            self._manifest(backend, engine, monitor)
            yield Session(backend, runner, monitor, engine, self, dict(merged))
        finally:
            monitor.stop()
            self.store.write_manifest(ended_utc=_utc(), sampling_unavailable=monitor.unavailable)
            backend.close()
            if engine is not None:
                engine.stop()

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
            study=self.study, started_utc=m.get("started_utc", _utc()), perfkit_version=host.versions().get("perfkit"),
            backend=backend.describe(), engine_command=engine.command if engine else None,
            models=facts, host=host.info(), params=self.params.model_dump(mode="json"),
            params_file=str(self.params_path), sampling_interval_s=self.params.sampling.interval_s,
            gpus_sampled=monitor.gpu.devices if monitor.gpu else [],
        )


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
