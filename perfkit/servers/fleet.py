"""Several servers behind a reverse proxy: the embedded one perfkit starts (N engines, threads split
fairly, nginx in front) or a user's own proxy and servers, which perfkit only talks to.

The fleet study (``perfkit.studies.fleet``) measures through it; this module only starts, changes,
breaks and stops the parts, and says what it did when.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from perfkit.servers.engine import Engine
from perfkit.core.errors import PerfkitError
from perfkit.servers.nginx import Nginx, ProxyConfig, Upstream
from perfkit.core.clock import now_ns

FLEET_MODEL = "fleet-model"  # the name the embedded servers serve; a symlink, so the model behind it can change


@dataclass
class Server:
    """One upstream: its URL, weight, and (embedded) the engine perfkit runs for it."""

    url: str
    weight: int = 1
    engine: Engine | None = None

    @property
    def addr(self) -> str:
        """``host:port``, as nginx's ``$upstream_addr`` names it."""
        return self.url.split("://", 1)[-1].rstrip("/")


@dataclass
class Fleet:
    """Args:
        servers: the upstreams.
        proxy_url: the proxy in front of them.
        nginx: the proxy perfkit runs (None for a user's own).
        models_dir: (embedded) the directory the engines serve, holding ``fleet-model.gguf``.
    """

    servers: list[Server]
    proxy_url: str
    nginx: Nginx | None = None
    models_dir: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    on_event: Any = None  # called with each event as it happens (the study stores it at once)

    @property
    def managed(self) -> bool:
        return self.nginx is not None

    @classmethod
    def embedded(cls, models_dir: Path, model_file: str, run_dir: Path, *, servers: int, weights: list[int],
                 threads: int, settings: dict[str, Any], proxy: dict[str, Any] | None = None,
                 log_dir: Path, extra_args=()) -> "Fleet":
        """Start ``servers`` engines (``threads`` each) serving ``model_file`` as ``fleet-model``, and
        nginx in front with ``weights`` and ``proxy`` (``ProxyConfig`` fields). Stopped by ``stop()``, also
        when starting fails half-way."""
        fdir = run_dir / "fleet-models"
        fdir.mkdir(parents=True, exist_ok=True)
        link = fdir / f"{FLEET_MODEL}.gguf"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(models_dir) / f"{model_file}.gguf")
        fleet = cls([], "", models_dir=fdir)
        try:
            for i in range(servers):
                eng = Engine(fdir, {**settings, "num_thread": threads}, log_path=log_dir / f"fleet-engine{i}.log",
                             extra_args=extra_args).start()
                fleet.servers.append(Server(eng.base_url, weights[i], eng))
            cfg = ProxyConfig([Upstream(s.url, s.weight) for s in fleet.servers], **(proxy or {}))
            fleet.nginx = Nginx(cfg, run_dir).start()
            fleet.proxy_url = fleet.nginx.url
        except BaseException:
            fleet.stop()
            raise
        return fleet

    @classmethod
    def external(cls, proxy_url: str, server_urls: list[str], weights: list[int]) -> "Fleet":
        """A user's proxy and servers: measured, never started, changed or stopped."""
        return cls([Server(u.rstrip("/"), w) for u, w in zip(server_urls, weights)], proxy_url.rstrip("/"))

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"managed": self.managed, "proxy_url": self.proxy_url,
                             "servers": [{"url": s.url, "weight": s.weight} for s in self.servers]}
        if self.nginx is not None:
            c = self.nginx.cfg
            d.update(proxy="nginx", proxy_version=self.nginx.version, cores=os.cpu_count(),
                     threads_per_server=self.servers[0].engine.settings.get("num_thread"), conf=str(self.nginx.conf_path),
                     proxy_read_timeout_s=c.proxy_read_timeout_s, buffering=c.buffering, keepalive=c.keepalive,
                     max_fails=c.max_fails, fail_timeout_s=c.fail_timeout_s, next_upstream=c.next_upstream)
        return d

    # ---- changes (embedded only) ---------------------------------------------------------------
    def _need_managed(self, what: str) -> None:
        if not self.managed:
            raise PerfkitError(f"{what} needs the fleet perfkit runs; a user's own proxy and servers are "
                               "only measured")

    def reconfigure(self, **changes: Any) -> ProxyConfig:
        """Reload nginx with ``changes`` to its config (timeouts, buffering, cache ...)."""
        self._need_managed("changing the proxy")
        cfg = replace(self.nginx.cfg, **changes)
        self.nginx.reload(cfg)
        self._event("proxy_reload", **{k: v for k, v in changes.items() if k != "upstreams"})
        return cfg

    def kill(self, i: int) -> int:
        """SIGKILL server ``i`` and its model processes, as a crash would; returns when (ns)."""
        self._need_managed("killing a server")
        eng = self.servers[i].engine
        t = now_ns()
        try:
            os.killpg(eng.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._event("server_killed", server=self.servers[i].addr, t_ns=t)
        return t

    def revive(self, i: int) -> None:
        """Start server ``i`` again on its port (after ``kill``)."""
        self._need_managed("restarting a server")
        eng = self.servers[i].engine
        eng.stop()  # reaps the killed group; start() then reuses the port
        eng.start()
        self._event("server_revived", server=self.servers[i].addr)

    def swap_model(self, model_file: str, source_dir: Path) -> None:
        """Point ``fleet-model`` at another file, as a new model pulled under the same name would."""
        self._need_managed("changing the model")
        link = self.models_dir / f"{FLEET_MODEL}.gguf"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(source_dir) / f"{model_file}.gguf")
        self._event("model_swapped", to=model_file)

    def _event(self, kind: str, **data: Any) -> None:
        e = {"kind": kind, "t_ns": data.pop("t_ns", now_ns()), **data}
        self.events.append(e)
        if self.on_event is not None:
            self.on_event(e)

    def stop(self) -> None:
        """Stop nginx and every engine perfkit started (safe to call twice, and after a failed start)."""
        if self.nginx is not None:
            self.nginx.stop()
        engines = [s.engine for s in self.servers if s.engine is not None]
        if engines:
            # Together: an engine with a request in flight may take its whole grace period to stop.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(engines)) as pool:
                list(pool.map(lambda e: e.stop(), engines))

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

