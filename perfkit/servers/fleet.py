"""Several servers behind a reverse proxy: the embedded one perfkit starts (N engines, threads split
fairly, nginx in front), servers on other hosts driven through perfkit's agents there (nginx in front, run
here, or the user's proxy), or a user's own proxy and servers, which perfkit only talks to.

The fleet study (``perfkit.studies.fleet``) measures through it; this module only starts, changes,
breaks and stops the parts, and says what it did when.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from perfkit.servers.control import Killable
from perfkit.core.errors import PerfkitError
from perfkit.core.settings import THREADS, name_of
from perfkit.servers.nginx import Nginx, ProxyConfig, Upstream
from perfkit.core.clock import now_ns

FLEET_MODEL = "fleet-model"  # the name the embedded servers serve; a symlink, so the model behind it can change


@dataclass
class Server:
    """One upstream: its URL, weight, and what perfkit sees of it beyond its API: the engine perfkit runs for it
    (embedded), or a controller (``ServerControl``: an agent on the server's host), or neither."""

    url: str
    weight: int = 1
    engine: Any = None  # the server perfkit started for it (the run's kind's)
    control: Any = None
    host: str | None = None  # the name of the host it runs on (a cluster node), where known

    @property
    def name(self) -> str:
        return self.host or self.addr

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
                 log_dir: Path, start: Callable[[Path, dict[str, Any], Path], Any]) -> "Fleet":
        """Start ``servers`` engines (``threads`` each) serving ``model_file`` as ``fleet-model``, and
        nginx in front with ``weights`` and ``proxy`` (``ProxyConfig`` fields). ``start(models_dir, settings,
        log_path)`` starts one engine (the run's kind's) and returns it running. Stopped by ``stop()``, also
        when starting fails half-way."""
        fdir = run_dir / "fleet-models"
        fdir.mkdir(parents=True, exist_ok=True)
        link = fdir / f"{FLEET_MODEL}.gguf"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(models_dir) / f"{model_file}.gguf")
        fleet = cls([], "", models_dir=fdir)
        try:
            for i in range(servers):
                eng = start(fdir, {**settings, name_of(THREADS): threads}, log_dir / f"fleet-engine{i}.log")
                fleet.servers.append(Server(eng.base_url, weights[i], eng))
            cfg = ProxyConfig([Upstream(s.url, s.weight) for s in fleet.servers], **(proxy or {}))
            fleet.nginx = Nginx(cfg, run_dir).start()
            fleet.proxy_url = fleet.nginx.url
        except BaseException:
            fleet.stop()
            raise
        return fleet

    @classmethod
    def on_hosts(cls, servers: list[Server], run_dir: Path, *, proxy_url: str | None = None,
                 proxy: dict[str, Any] | None = None) -> "Fleet":
        """Servers on other hosts (each with its agent's controller), behind the user's proxy at ``proxy_url`` or,
        without one, nginx started here with ``proxy`` (``ProxyConfig`` fields) in front of them."""
        if proxy_url:
            return cls(servers, proxy_url.rstrip("/"))
        fleet = cls(servers, "")
        cfg = ProxyConfig([Upstream(s.url, s.weight) for s in servers], **(proxy or {}))
        fleet.nginx = Nginx(cfg, run_dir).start()
        fleet.proxy_url = fleet.nginx.url
        return fleet

    @classmethod
    def external(cls, proxy_url: str, server_urls: list[str], weights: list[int]) -> "Fleet":
        """A user's proxy and servers: measured, never started, changed or stopped."""
        return cls([Server(u.rstrip("/"), w) for u, w in zip(server_urls, weights)], proxy_url.rstrip("/"))

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"managed": self.managed, "proxy_url": self.proxy_url,
                             "servers": [{"url": s.url, "weight": s.weight,
                                          **({"host": s.host, "control": s.control.describe()} if s.control else {})}
                                         for s in self.servers]}
        if self.nginx is not None:
            c = self.nginx.cfg
            eng = self.servers[0].engine
            d.update(proxy="nginx", proxy_version=self.nginx.version, cores=os.cpu_count(),
                     threads_per_server=eng.settings.get("num_thread") if eng else None, conf=str(self.nginx.conf_path),
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

    def can_kill(self, i: int) -> bool:
        """Whether perfkit may crash server ``i`` (one it started: an engine here, or a server its agent started)."""
        s = self.servers[i]
        return s.engine is not None or (isinstance(s.control, Killable) and s.control.can_kill())

    def kill(self, i: int) -> int:
        """SIGKILL server ``i`` and its model processes, as a crash would; returns when (ns, the run's clock)."""
        if not self.can_kill(i):
            raise PerfkitError("perfkit does not kill servers it did not start")
        s = self.servers[i]
        if s.engine is None:
            t = s.control.kill()
        else:
            t = now_ns()
            try:
                os.killpg(s.engine.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._event("server_killed", server=s.addr, t_ns=t)
        return t

    def revive(self, i: int) -> None:
        """Start server ``i`` again on its port (after ``kill``)."""
        s = self.servers[i]
        if s.engine is None:
            s.control.revive()
        else:
            s.engine.stop()  # reaps the killed group; start() then reuses the port
            s.engine.start()
        self._event("server_revived", server=s.addr)

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

