"""Putting a model into a cache state on demand, verified, and the warmup strategies users choose from.

Cache states (../shared/reference/metrics.md): ``cold_disk`` (unloaded, file evicted from the page
cache; local engine only), ``cold_memory`` (unloaded, file in the page cache), ``warm`` (resident,
prompt not cached), ``warm_cached`` (resident, identical prompt sent before).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import pagecache
from .backends.base import Backend, Sampling
from .errors import PerfkitError
from .records import CACHE_STATES, now_ns

WARMUP_STRATEGIES = ("none", "preload", "keep_warm")


@dataclass
class StateCheck:
    """What was verified just before a trial: the state it claims is the state it had."""

    cache_state: str
    loaded_before: bool
    verified: bool
    file_resident_fraction: float | None = None  # page-cache share of the model file (local engine)
    prepare_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _warm_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def prepare_state(backend: Backend, model: str, state: str, *, prompt: str | None = None,
                  sampling: Sampling | None = None) -> StateCheck:
    """Put ``model`` into ``state`` and verify it. For ``warm_cached``, ``prompt`` is sent once now."""
    if state not in CACHE_STATES:
        raise PerfkitError(f"unknown cache state {state!r}; allowed: {', '.join(CACHE_STATES)}")
    if state == "cold_disk" and not backend.supports_cold_disk:
        raise PerfkitError(f"cold_disk needs a local engine; the {backend.name} backend cannot evict "
                           "model files (use cold_memory)")
    t0 = time.perf_counter()
    loaded_before = backend.is_loaded(model)
    path = backend.model_facts(model).path if backend.supports_cold_disk else None
    fraction = None
    if state in ("cold_disk", "cold_memory"):
        backend.unload(model)
        if path:
            if state == "cold_disk":
                backend.evict_file(model)
            else:
                _warm_page_cache(path)
            fraction = pagecache.resident_fraction(path)
        verified = not backend.is_loaded(model) and (
            fraction is None or (fraction < 0.05 if state == "cold_disk" else fraction > 0.95))
    else:
        if not backend.is_loaded(model):
            backend.load(model)
        if state == "warm_cached":
            if prompt is None:
                raise PerfkitError("warm_cached needs the prompt that will be repeated")
            first = backend.generate(model, prompt, sampling or Sampling(num_predict=1))
            if not first.ok:
                raise PerfkitError(f"priming the prompt cache failed: {first.error}")
        if path:
            fraction = pagecache.resident_fraction(path)
        verified = backend.is_loaded(model)
    return StateCheck(state, loaded_before, verified, fraction, time.perf_counter() - t0)


class KeepWarm:
    """A background loop that refreshes a model's residency every ``interval_s`` seconds.

    Each refresh is a 1-token request (with ``keep_alive`` on Ollama), logged with its time and
    latency; ``interval_s`` must be shorter than the server's keep-alive for the model to stay warm.
    Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(self, backend: Backend, model: str, interval_s: float, *, keep_alive: object = None,
                 log_path: str | Path | None = None):
        if interval_s <= 0:
            raise PerfkitError(f"keep-warm interval must be > 0 s, got {interval_s}")
        self.backend, self.model, self.interval_s, self.keep_alive = backend, model, interval_s, keep_alive
        self.log_path = Path(log_path) if log_path else None
        self.log: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refresh(self) -> None:
        rec = self.backend.generate(self.model, "ok", Sampling(num_predict=1), keep_alive=self.keep_alive,
                                    timeout_s=max(60.0, self.interval_s * 10))
        entry = {"t_ns": now_ns(), "wall_unix_s": time.time(), "ok": rec.ok, "e2e_s": rec.e2e_s,
                 "load_s": rec.load_s, "error": rec.error}
        self.log.append(entry)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self._refresh()
            k += 1
            # Fixed schedule (start + k·interval): a slow refresh does not push later ones back.
            self._stop.wait(max(0.0, start + k * self.interval_s - time.monotonic()))

    def start(self) -> "KeepWarm":
        self._thread = threading.Thread(target=self._run, name="perfkit-keep-warm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=120)

    def __enter__(self) -> "KeepWarm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class FirstRequest:
    """The first request a user sends after a warmup strategy and an idle gap."""

    strategy: str
    idle_gap_s: float
    record: object
    loaded_at_send: bool
    keep_warm_refreshes: int = 0
    extra: dict = field(default_factory=dict)


def user_first_request(backend: Backend, model: str, strategy: str, *, idle_gap_s: float, prompt: str,
                       sampling: Sampling | None = None, keep_warm_interval_s: float | None = None,
                       keep_alive: object = None, timeout_s: float | None = None) -> FirstRequest:
    """Start from ``cold_memory``, apply ``strategy``, stay idle ``idle_gap_s``, then time one request."""
    if strategy not in WARMUP_STRATEGIES:
        raise PerfkitError(f"unknown warmup strategy {strategy!r}; allowed: {', '.join(WARMUP_STRATEGIES)}")
    prepare_state(backend, model, "cold_memory")
    keeper = None
    if strategy in ("preload", "keep_warm"):
        backend.load(model)
    if strategy == "keep_warm":
        if not keep_warm_interval_s:
            raise PerfkitError("keep_warm needs keep_warm_interval_s")
        keeper = KeepWarm(backend, model, keep_warm_interval_s, keep_alive=keep_alive).start()
    try:
        time.sleep(idle_gap_s)
        loaded = backend.is_loaded(model)
        kwargs = {"timeout_s": timeout_s} if timeout_s else {}
        rec = backend.generate(model, prompt, sampling, keep_alive=keep_alive, **kwargs)
    finally:
        if keeper:
            keeper.stop()
    return FirstRequest(strategy, idle_gap_s, rec, loaded, len(keeper.log) if keeper else 0)
