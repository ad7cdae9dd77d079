"""Putting a model into a cache state on demand, verified before and after the request, and the
warmup strategies users choose from.

Cache states (``perfkit.records.CACHE_STATES``; ../shared/reference/metrics.md):
``cold_server`` (server restarted, then the first request), ``cold_disk`` (unloaded, file evicted
from the page cache), ``cold_memory`` (unloaded, file in the page cache, memory released),
``first_after_load`` (loaded, never used), ``warm`` (resident and primed, prompt not cached),
``warm_cached`` (resident, identical prompt sent before).

Every load perfkit makes is followed by an unrecorded priming request, so a ``warm`` trial never
pays the first request's allocation and first kernels; that cost is measured on its own, as
``first_after_load``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perfkit.client.backends.base import DEFAULT_TIMEOUT_S, Backend, Sampling
from perfkit.servers.control.base import Unknown
from perfkit.core.errors import PerfkitError
from perfkit.core.clock import now_ns
from perfkit.core.records import CACHE_STATES, RequestRecord

WARMUP_STRATEGIES = ("none", "preload", "keep_warm")
PRIME_PROMPT = "ok"


@dataclass
class StateCheck:
    """What was verified about a trial's cache state, before and after its request.

    ``verified``: True (checked and holds), False (checked and does not: the trial is kept but left
    out of the state's statistics) or None (not verifiable on this server; ``note`` says why).
    """

    cache_state: str
    loaded_before: bool
    verified: bool | None
    note: str = ""
    file_resident_fraction: float | None = None  # page-cache share of the model file (local files only)
    prepare_s: float = 0.0
    memory_release_wait_s: float | None = None  # unload → the model's memory really free (runner exited)
    restart: dict | None = None  # cold_server: the restart's timings
    primed: bool = False  # a priming request followed a load made while preparing

    def as_dict(self) -> dict:
        return asdict(self)


def prime(backend: Backend, model: str, keep_alive: object = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
          ) -> RequestRecord:
    """The unrecorded first request after a load: it pays allocation and first kernels so the next
    (measured) request doesn't. Bounded by the run's request timeout like every request perfkit sends."""
    rec = backend.generate(model, PRIME_PROMPT, Sampling(num_predict=2), keep_alive=keep_alive, timeout_s=timeout_s)
    if not rec.ok:
        raise PerfkitError(f"priming {model!r} after its load failed: {rec.error}")
    return rec


def residency(backend: Backend, model: str) -> bool | None:
    """Whether the server lists ``model`` as resident; None where it can't say (an OpenAI-compatible API)."""
    try:
        return backend.is_loaded(model)
    except Unknown:
        return None


def ensure_warm(backend: Backend, model: str, keep_alive: object = None, *,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Make ``model`` resident and primed; True if it had to be loaded (and was primed). ``timeout_s`` bounds
    the load and the priming request."""
    is_resident = residency(backend, model)
    if is_resident:
        return False
    if is_resident is None:  # the server can't say: a served request makes it resident, and primes it
        primed = backend.__dict__.setdefault("_primed_models", set())
        if model not in primed:  # once per backend: it can't tell an unload apart anyway
            prime(backend, model, keep_alive, timeout_s=timeout_s)
            primed.add(model)
        return False
    backend.load(model, timeout_s=timeout_s, keep_alive=keep_alive)
    prime(backend, model, keep_alive, timeout_s=timeout_s)
    return True


def _unload(backend: Backend, model: str) -> float | None:
    backend.unload(model)
    return backend.control.wait_memory_released(model)


def _file_cache(backend: Backend, model: str, action: str | None, need: bool) -> float | None:
    """The model file's page-cache share on the server's host after ``action`` (see ``ServerControl.file_cache``)."""
    try:
        return backend.control.file_cache(model, action)
    except Unknown as e:
        if need:
            raise PerfkitError(f"cold_disk needs the model's file on the server's host: {e}") from None
        return None


def prepare_state(backend: Backend, model: str, state: str, *, prompt: str | None = None,
                  sampling: Sampling | None = None, keep_alive: object = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> StateCheck:
    """Put ``model`` into ``state`` and check it. For ``warm_cached``, ``prompt`` is sent once now."""
    if state not in CACHE_STATES:
        raise PerfkitError(f"unknown cache state {state!r}; allowed: {', '.join(CACHE_STATES)}")
    t0 = time.perf_counter()
    loaded_before = residency(backend, model)
    check = StateCheck(state, loaded_before, None)
    if state == "cold_server":
        info = backend.control.restart(None)
        check.restart = info.as_dict()
        check.verified = not backend.is_loaded(model)
        check.note = "" if check.verified else "the model was resident right after the restart"
    elif state in ("cold_disk", "cold_memory"):
        _file_cache(backend, model, None, need=state == "cold_disk")  # the file is visible, before unloading
        check.memory_release_wait_s = _unload(backend, model)
        check.file_resident_fraction = _file_cache(backend, model, "evict" if state == "cold_disk" else "warm",
                                                   need=state == "cold_disk")
        resident = backend.is_loaded(model)
        if resident:
            check.verified, check.note = False, "the server still lists the model as resident"
        elif check.file_resident_fraction is None:
            check.verified = True
            check.note = "unloaded (verified); the model file is not visible here, so its page-cache state is unknown"
        else:
            f = check.file_resident_fraction
            check.verified = f < 0.05 if state == "cold_disk" else f > 0.95
            check.note = "" if check.verified else f"{f:.0%} of the model file is in the page cache"
    elif state == "first_after_load":
        check.memory_release_wait_s = _unload(backend, model)
        backend.load(model, timeout_s=timeout_s, keep_alive=keep_alive)
        check.verified = backend.is_loaded(model)
    else:
        check.primed = ensure_warm(backend, model, keep_alive, timeout_s=timeout_s)
        if state == "warm_cached":
            if prompt is None:
                raise PerfkitError("warm_cached needs the prompt that will be repeated")
            first = backend.generate(model, prompt, sampling or Sampling(num_predict=1), keep_alive=keep_alive,
                                     timeout_s=timeout_s)
            if not first.ok:
                raise PerfkitError(f"priming the prompt cache failed: {first.error}")
        check.verified = residency(backend, model)
        if check.verified is None:
            check.note = "residency unknown: the server does not report it (it answered the priming request)"
    if check.file_resident_fraction is None and state not in ("cold_disk", "cold_memory"):
        check.file_resident_fraction = _file_cache(backend, model, None, need=False)
    check.prepare_s = time.perf_counter() - t0
    return check


def confirm(check: StateCheck, rec: RequestRecord, shared_prefix_tokens: int | None, *,
            load_seen: bool = False) -> StateCheck:
    """Check the state again against what the request itself shows (a load during it; prompt-cache hits).

    ``shared_prefix_tokens``: tokens every prompt shares (the chat template's head), which the server
    may serve from its cache in any state; None where the server reports no cached count (Ollama).
    ``load_seen``: the backend observes a load during a request (``Capabilities.load_seen_per_request``);
    where it does not (Ollama reports a load_duration on every request), a load proves nothing.
    """
    if check.verified is False or not rec.ok:
        return check
    state = check.cache_state
    loaded_during = (rec.t_loaded_ns is not None or (rec.load_s or 0) > 0) if load_seen else None
    notes = [check.note] if check.note else []
    if state in ("cold_server", "cold_disk", "cold_memory"):
        if loaded_during is False:
            check.verified = False
            notes.append("the request did not load the model")
    elif state in ("first_after_load", "warm", "warm_cached"):
        if loaded_during:
            check.verified = False
            notes.append("the model was loaded during the request")
        elif rec.cached_tokens is None or shared_prefix_tokens is None:
            if state == "warm_cached" or (rec.cached_tokens is None and state == "warm"):
                check.verified = None
                notes.append("residency verified; prompt-cache hits are not verifiable on this server "
                             "(it reports no cached-token count)")
        else:
            hit = rec.cached_tokens - shared_prefix_tokens
            # Two unique prompts may still share a token or two after the template head by chance; what
            # matters is the share of the prompt's own prefill the cache saved.
            own = max(1, (rec.prompt_tokens or rec.cached_tokens) - shared_prefix_tokens)
            if state == "warm_cached" and hit < 0.5 * own:
                check.verified = False
                notes.append(f"no prompt-cache hit ({rec.cached_tokens} cached tokens, template prefix "
                             f"{shared_prefix_tokens})")
            elif state != "warm_cached" and hit > max(4, 0.1 * own):
                check.verified = False
                notes.append(f"{hit} of the prompt's {own} own tokens came from the cache")
    check.note = "; ".join(n for n in notes if n)
    return check


class KeepWarm:
    """A background loop that refreshes a model's residency on a fixed schedule.

    Refreshes start at ``start + offset_s + k·interval_s`` (k = 0, 1, ...); each is a 1-token request
    (with ``keep_alive`` on Ollama), logged with its start, end and latency. ``interval_s`` must be
    shorter than the server's keep-alive for the model to stay warm. Use as a context manager, or
    ``start()``/``stop()``.
    """

    def __init__(self, backend: Backend, model: str, interval_s: float, *, keep_alive: object = None,
                 log_path: str | Path | None = None, offset_s: float = 0.0):
        if interval_s <= 0:
            raise PerfkitError(f"keep-warm interval must be > 0 s, got {interval_s}")
        self.backend, self.model, self.interval_s, self.keep_alive = backend, model, interval_s, keep_alive
        self.offset_s = offset_s
        self.log_path = Path(log_path) if log_path else None
        self.log: list[dict] = []
        self.t_start_ns: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refresh(self) -> None:
        t0 = now_ns()
        rec = self.backend.generate(self.model, PRIME_PROMPT, Sampling(num_predict=1), keep_alive=self.keep_alive,
                                    timeout_s=max(60.0, self.interval_s * 10))
        entry = {"t_start_ns": t0, "t_end_ns": now_ns(), "wall_unix_s": time.time(), "ok": rec.ok,
                 "e2e_s": rec.e2e_s, "load_s": rec.load_s, "error": rec.error}
        self.log.append(entry)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _run(self) -> None:
        start = time.monotonic() + self.offset_s
        k = 0
        while not self._stop.wait(max(0.0, start + k * self.interval_s - time.monotonic())):
            self._refresh()
            k += 1
            # A refresh slower than the interval skips the slots it overran instead of bursting.
            k = max(k, int((time.monotonic() - start) / self.interval_s) + 1)

    def phase_at(self, t_ns: int) -> dict[str, Any]:
        """Where ``t_ns`` falls in the refresh cycle: the share of the interval since the last refresh
        started, and whether a refresh was in flight (then the measured request queued behind it)."""
        started = [e for e in self.log if e["t_start_ns"] <= t_ns]
        if not started:
            return {"keep_warm_phase": None, "keep_warm_collision": False}
        last = started[-1]
        return {"keep_warm_phase": ((t_ns - last["t_start_ns"]) * 1e-9 / self.interval_s) % 1.0,
                "keep_warm_collision": last["t_end_ns"] > t_ns}

    def start(self) -> "KeepWarm":
        self.t_start_ns = now_ns()
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


def mid_cycle_offset(idle_gap_s: float, interval_s: float, phase: float = 0.5) -> float:
    """The schedule offset that puts a request sent ``idle_gap_s`` after the start at ``phase`` of a
    refresh cycle. With a gap that is a multiple of the interval, refreshes at start + k·interval
    would fire exactly when the measured request does, and it would queue behind one every time."""
    return (idle_gap_s - phase * interval_s) % interval_s


@dataclass
class FirstRequest:
    """The first request a user sends after a warmup strategy and an idle gap."""

    strategy: str
    idle_gap_s: float
    record: RequestRecord
    loaded_at_send: bool
    keep_warm_refreshes: int = 0
    extra: dict = field(default_factory=dict)


def user_first_request(backend: Backend, model: str, strategy: str, *, idle_gap_s: float, prompt: str,
                       sampling: Sampling | None = None, keep_warm_interval_s: float | None = None,
                       keep_alive: object = None, timeout_s: float | None = None,
                       keep_warm_phase: float = 0.5) -> FirstRequest:
    """Start from ``cold_memory``, apply ``strategy``, stay idle ``idle_gap_s``, then time one request.

    keep_warm: the refresh schedule is offset so the request falls at ``keep_warm_phase`` of a cycle
    (mid-cycle by default); the phase it really had, and whether a refresh was in flight, are recorded.
    """
    if strategy not in WARMUP_STRATEGIES:
        raise PerfkitError(f"unknown warmup strategy {strategy!r}; allowed: {', '.join(WARMUP_STRATEGIES)}")
    limit = timeout_s or DEFAULT_TIMEOUT_S
    prepare_state(backend, model, "cold_memory", timeout_s=limit)
    keeper = None
    if strategy in ("preload", "keep_warm"):
        # A preload as users make it: a load, then the first request pays the first-use cost.
        backend.load(model, timeout_s=limit, keep_alive=keep_alive)
    if strategy == "keep_warm":
        if not keep_warm_interval_s:
            raise PerfkitError("keep_warm needs keep_warm_interval_s")
        keeper = KeepWarm(backend, model, keep_warm_interval_s, keep_alive=keep_alive,
                          offset_s=mid_cycle_offset(idle_gap_s, keep_warm_interval_s, keep_warm_phase)).start()
    extra: dict[str, Any] = {}
    try:
        time.sleep(idle_gap_s)
        loaded = backend.is_loaded(model)
        kwargs = {"timeout_s": timeout_s} if timeout_s else {}
        rec = backend.generate(model, prompt, sampling, keep_alive=keep_alive, **kwargs)
        if keeper:
            extra = keeper.phase_at(rec.t_send_ns)
    finally:
        if keeper:
            keeper.stop()
    return FirstRequest(strategy, idle_gap_s, rec, loaded, len(keeper.log) if keeper else 0, extra)


@dataclass
class SchemeA:
    """The seed guide's scheme A: restart the server, preload at start; a user request arrives
    ``delay_s`` after the new server answers.

    ``warm_after_s``: restart → the preload (a load and a priming request) finished, i.e. the time
    after which a user request is served at warm speed. ``preload_done_at_send``: whether the user's
    request came after that.
    """

    delay_s: float
    record: RequestRecord
    restart_ready_s: float
    warm_after_s: float | None
    preload_done_at_send: bool
    preload_error: str | None = None


def scheme_a(backend: Backend, model: str, *, delay_s: float, prompt: str, sampling: Sampling | None = None,
             keep_alive: object = None, timeout_s: float | None = None) -> SchemeA:
    info = backend.control.restart(None)
    done: dict[str, Any] = {}

    def preload() -> None:
        try:
            backend.load(model, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, keep_alive=keep_alive)
            prime(backend, model, keep_alive, timeout_s=timeout_s or DEFAULT_TIMEOUT_S)
            done["t_ns"] = now_ns()
        except Exception as e:  # noqa: BLE001 - recorded with the trial
            done["error"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=preload, name="perfkit-scheme-a-preload", daemon=True)
    th.start()
    wait = info.t_ready_ns * 1e-9 + delay_s - now_ns() * 1e-9
    if wait > 0:
        time.sleep(wait)
    kwargs = {"timeout_s": timeout_s} if timeout_s else {}
    done_before = "t_ns" in done
    rec = backend.generate(model, prompt, sampling, keep_alive=keep_alive, **kwargs)
    th.join(timeout=timeout_s or 1800)
    warm_after = (done["t_ns"] - info.t_restart_ns) * 1e-9 if "t_ns" in done else None
    return SchemeA(delay_s, rec, info.ready_s, warm_after, done_before, done.get("error"))
